"""otel-feedback: users' feedback and evaluators' scores next to the traces they judge, in one DuckDB file."""

from __future__ import annotations

from ._version import __version__
from .client import FeedbackClient, query
from .config import Settings
from .errors import (
    DatabaseLocked,
    InvalidRequest,
    OtelFeedbackError,
    QueryError,
    QueryRejected,
    QueryTimeout,
    QueueFull,
    SchemaError,
    StoreUnavailable,
)
from .ids import current_span_id, current_trace_id
from .processor import DuckDBSpanExporter, configure, record_feedback
from .store import Store

__all__ = [
    "DatabaseLocked",
    "DuckDBSpanExporter",
    "FeedbackClient",
    "InvalidRequest",
    "OtelFeedbackError",
    "QueryError",
    "QueryRejected",
    "QueryTimeout",
    "QueueFull",
    "SchemaError",
    "Settings",
    "Store",
    "StoreUnavailable",
    "__version__",
    "configure",
    "current_span_id",
    "current_trace_id",
    "query",
    "record_feedback",
]
