"""otel-feedback: users' feedback and evaluators' scores next to the traces they judge, in one DuckDB file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
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

_EXPORTS = {
    "FeedbackClient": "client",
    "query": "client",
    "Settings": "config",
    "DatabaseLocked": "errors",
    "InvalidRequest": "errors",
    "OtelFeedbackError": "errors",
    "QueryError": "errors",
    "QueryRejected": "errors",
    "QueryTimeout": "errors",
    "QueueFull": "errors",
    "SchemaError": "errors",
    "StoreUnavailable": "errors",
    "current_span_id": "ids",
    "current_trace_id": "ids",
    "DuckDBSpanExporter": "processor",
    "configure": "processor",
    "record_feedback": "processor",
    "Store": "store",
}
"""Where each public name lives. They are imported on first use (PEP 562), so that importing the package, or
running the ``otel-feedback`` command, loads pyarrow and DuckDB only when something needs them (``serve``
keeps some of their optional imports out of its process: see :mod:`.keepout`)."""


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_feedback' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
