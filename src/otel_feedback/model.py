"""The row shapes everything between decoding and DuckDB agrees on.

Rows travel as Arrow tables whose schemas are defined here, one per stored table. Conventions:

* trace / span ids are lowercase hex text (32 / 16 characters); an absent parent is NULL;
* times are ``timestamp[ns]`` in UTC (OTLP's nanoseconds, kept exactly);
* kinds and status codes are readable text (``SERVER``, ``ERROR``...);
* attributes, resource attributes, events and links are JSON text that keeps value types: strings,
  booleans, integers (64-bit), doubles (always written with a decimal point), arrays and nested maps;
  bytes values become base64 strings and non-finite doubles the strings ``NaN``/``Infinity``/``-Infinity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")

_TS = pa.timestamp("ns")

SPAN_SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("parent_span_id", pa.string()),
        ("trace_state", pa.string()),
        ("flags", pa.int64()),
        ("name", pa.string()),
        ("kind", pa.string()),
        ("start_time", _TS),
        ("end_time", _TS),
        ("duration_ms", pa.float64()),
        ("status_code", pa.string()),
        ("status_message", pa.string()),
        ("service_name", pa.string()),
        ("scope_name", pa.string()),
        ("scope_version", pa.string()),
        ("session_id", pa.string()),
        ("client_request_id", pa.string()),
        ("attributes", pa.string()),
        ("resource_attributes", pa.string()),
        ("scope_attributes", pa.string()),
        ("events", pa.string()),
        ("links", pa.string()),
        ("dropped_attributes_count", pa.int64()),
        ("dropped_events_count", pa.int64()),
        ("dropped_links_count", pa.int64()),
        # derived at decode time from the attributes, so queries over millions of spans need not parse
        # every span's JSON (migration 0002): the model called, the span's own feedback keys (NULL when it
        # has none), and whether it is an OpenInference annotation carrier (feedback, not application work)
        ("model", pa.string()),
        ("feedback_attributes", pa.string()),
        ("annotation_carrier", pa.bool_()),
        # a root span's OpenInference ``input.value`` / ``output.value`` (the question and the answer)
        ("input", pa.string()),
        ("output", pa.string()),
        ("received_at", _TS),
    ]
)
"""One row per span, as received (table ``span_log``), plus columns derived from its attributes."""

MODEL_KEYS = ("gen_ai.request.model", "llm.model_name", "gen_ai.response.model")
"""Attributes naming the model a span called, in order of preference."""

FEEDBACK_KEYS = (
    "user_feedback",
    "user_feedback_rating",
    "user_feedback_category",
    "user_feedback_comment",
    "user_feedback_timestamp",
)
"""The well-known feedback attributes the views turn into columns."""

OWN_FEEDBACK_KEYS = (*FEEDBACK_KEYS, "annotation_status")
"""The keys a span's own attributes contribute to ``span_log.feedback_attributes`` (derived at decode, NULL
when the span has none): the feedback columns, and ``annotation_status`` for the review queue."""

LOG_SCHEMA = pa.schema(
    [
        ("time", _TS),
        ("observed_time", _TS),
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("flags", pa.int64()),
        ("severity_number", pa.int64()),
        ("severity_text", pa.string()),
        ("event_name", pa.string()),
        ("body", pa.string()),
        ("attributes", pa.string()),
        ("resource_attributes", pa.string()),
        ("service_name", pa.string()),
        ("scope_name", pa.string()),
        ("scope_version", pa.string()),
        ("dropped_attributes_count", pa.int64()),
        ("received_at", _TS),
    ]
)
"""One row per OTLP log record, as received (table ``log_records``)."""

FEEDBACK_SCHEMA = pa.schema(
    [
        ("feedback_id", pa.string()),
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("target_key", pa.string()),
        ("target_value", pa.string()),
        ("attributes", pa.string()),
        ("name", pa.string()),
        ("label", pa.string()),
        ("score", pa.float64()),
        ("explanation", pa.string()),
        ("expected", pa.string()),
        ("error", pa.string()),
        ("metadata", pa.string()),
        ("annotator_kind", pa.string()),
        ("source_id", pa.string()),
        ("feedback_time", _TS),
        ("received_at", _TS),
        ("channel", pa.string()),
    ]
)
"""One row per feedback record (table ``feedback_log``; the writer adds the arrival ``seq``)."""

TABLE_SCHEMAS = {"span_log": SPAN_SCHEMA, "log_records": LOG_SCHEMA, "feedback_log": FEEDBACK_SCHEMA}

ANNOTATOR_KINDS = ("HUMAN", "LLM", "CODE")

TARGET_KEYS = {"session.id": "session_id", "client_request_id": "client_request_id"}
"""Span attributes feedback may be targeted by (key -> the ``span_log`` column that holds it).
``session.id`` targets every trace of the session; ``client_request_id`` the trace carrying it."""


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """One feedback record, already validated; ``attributes`` is a JSON merge patch."""

    feedback_id: str
    channel: str
    received_at_ns: int
    feedback_time_ns: int
    trace_id: str | None = None
    span_id: str | None = None
    target_key: str | None = None
    target_value: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    label: str | None = None
    score: float | None = None
    explanation: str | None = None
    expected: Any = None
    error: str | None = None
    metadata: dict[str, Any] | None = None
    annotator_kind: str | None = None
    source_id: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """Feedback found inside telemetry (a log record, a span event or an annotation carrier span),
    not yet validated. ``attributes`` are the event's own attributes, values typed."""

    channel: str
    event_name: str
    trace_id: str | None
    span_id: str | None
    time_ns: int
    attributes: dict[str, Any]
    body: Any = None
    record_id: str | None = None
