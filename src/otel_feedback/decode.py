"""OTLP protobuf messages -> Arrow tables of the shapes in :mod:`otel_feedback.model`. No I/O.

One private function per message type; ``decode_traces`` and ``decode_logs`` are the entry points.
This walk is the ingest hot path (Python touches every span and attribute), so it avoids per-value
indirection where it can: attribute values are turned into Python objects by one function with the
common cases first, and each resource's and scope's JSON is computed once, not per span.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .model import LOG_SCHEMA, MODEL_KEYS, OWN_FEEDBACK_KEYS, SPAN_KINDS, SPAN_SCHEMA, STATUS_CODES, FeedbackEvent

try:  # the compiled decoder (setup.py builds it where a C compiler is; the Python one below is the reference)
    from . import _otlp_fast
except ImportError:  # pragma: no cover - depends on the build
    _otlp_fast = None

COMPILED_DECODER = _otlp_fast is not None
"""Whether the compiled OTLP trace decoder was built and imported."""

ANNOTATION_PREFIXES = ("annotations.", "trace.annotations.", "session.annotations.", "evaluations.")
"""Attribute prefixes that make a span an OpenInference annotation carrier."""

_MODEL_1, _MODEL_2, _MODEL_3 = MODEL_KEYS  # unpacked: three dict lookups per span, no loop

EVALUATION_EVENT = "gen_ai.evaluation.result"

_dumps = orjson.dumps
_OPT = orjson.OPT_NON_STR_KEYS
_ZEROS = {8: bytes(8), 16: bytes(16)}


@dataclass
class Decoded:
    """What one export request turned into."""

    table: pa.Table
    rejected: int = 0
    messages: list[str] = field(default_factory=list)
    feedback: list[FeedbackEvent] = field(default_factory=list)

    @property
    def error_message(self) -> str:
        """All problems in one line, for OTLP partial success (empty when there were none)."""
        if len(self.messages) > 5:
            return "; ".join(self.messages[:5]) + f"; and {len(self.messages) - 5} more"
        return "; ".join(self.messages)


class _Limits:
    __slots__ = ("max_attribute_bytes", "truncated")

    def __init__(self, max_attribute_bytes: int) -> None:
        self.max_attribute_bytes = max_attribute_bytes
        self.truncated = 0


def _float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def _value(v: Any, limits: _Limits) -> Any:
    """One ``AnyValue`` as a JSON-ready Python value."""
    which = v.WhichOneof("value")
    if which == "string_value":
        s = v.string_value
        if len(s) > limits.max_attribute_bytes:
            limits.truncated += 1
            return s[: limits.max_attribute_bytes]
        return s
    if which == "int_value":
        return v.int_value
    if which == "bool_value":
        return v.bool_value
    if which == "double_value":
        d = v.double_value
        return d if math.isfinite(d) else _float(d)
    if which == "array_value":
        return [_value(x, limits) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value, limits) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        b = v.bytes_value
        if len(b) > limits.max_attribute_bytes:
            limits.truncated += 1
            b = b[: limits.max_attribute_bytes]
        return base64.b64encode(b).decode("ascii")
    return None


def any_value(v: Any, max_bytes: int = 1024 * 1024) -> Any:
    """One OTLP ``AnyValue`` as a plain Python value (None when it holds nothing)."""
    return _value(v, _Limits(max_bytes))


def key_values(kvs: Iterable[Any], max_bytes: int = 1024 * 1024) -> dict[str, Any]:
    """OTLP ``KeyValue``s as a dict of plain Python values."""
    return _attributes(kvs, _Limits(max_bytes))


def _attributes(kvs: Iterable[Any], limits: _Limits) -> dict[str, Any]:
    # The hot loop of ingest: strings and ints (most attribute values) are handled inline, without a
    # call per value; everything else goes through ``_value``.
    out: dict[str, Any] = {}
    most = limits.max_attribute_bytes
    for kv in kvs:
        v = kv.value
        which = v.WhichOneof("value")
        if which == "string_value":
            s = v.string_value
            if len(s) > most:
                limits.truncated += 1
                s = s[:most]
            out[kv.key] = s
        elif which == "int_value":
            out[kv.key] = v.int_value
        else:
            out[kv.key] = _value(v, limits)
    return out


def _json(obj: Any) -> str:
    return _dumps(obj, option=_OPT).decode()


def _hex_id(raw: bytes, size: int) -> str | None:
    """Lowercase hex of an id of ``size`` bytes; None when it is not a valid id."""
    if len(raw) != size or raw == _ZEROS[size]:
        return None
    return raw.hex()


def _resource(resource: Any, limits: _Limits) -> tuple[dict[str, Any], str, str | None]:
    attrs = _attributes(resource.attributes, limits)
    service = attrs.get("service.name")
    return attrs, _json(attrs), service if isinstance(service, str) else None


def _scope(scope: Any, limits: _Limits) -> tuple[str | None, str | None, str | None]:
    attrs = _json(_attributes(scope.attributes, limits)) if len(scope.attributes) else None
    return scope.name or None, scope.version or None, attrs


def _events(span: Any, limits: _Limits) -> list[dict[str, Any]]:
    return [
        {
            "name": e.name,
            "time_unix_nano": e.time_unix_nano,
            "attributes": _attributes(e.attributes, limits),
            **({"dropped_attributes_count": e.dropped_attributes_count} if e.dropped_attributes_count else {}),
        }
        for e in span.events
    ]


def _links(span: Any, limits: _Limits) -> list[dict[str, Any]]:
    out = []
    for link in span.links:
        item: dict[str, Any] = {
            "trace_id": link.trace_id.hex(),
            "span_id": link.span_id.hex(),
            "attributes": _attributes(link.attributes, limits),
        }
        if link.trace_state:
            item["trace_state"] = link.trace_state
        if link.flags:
            item["flags"] = link.flags
        if link.dropped_attributes_count:
            item["dropped_attributes_count"] = link.dropped_attributes_count
        out.append(item)
    return out


def _feedback_from_span(
    trace_id: str,
    span_id: str,
    attrs: dict[str, Any],
    events: list[dict[str, Any]],
    links: list[dict[str, Any]],
    end_ns: int,
    feedback_events: frozenset[str],
    out: list[FeedbackEvent],
) -> None:
    """Span events named as feedback, and OpenInference annotation carrier spans."""
    for e in events:
        if e["name"] in feedback_events or e["name"] == EVALUATION_EVENT:
            ea = e["attributes"]
            out.append(
                FeedbackEvent(
                    channel="span_event",
                    event_name=e["name"],
                    trace_id=ea.get("feedback.trace_id") or trace_id,
                    span_id=ea.get("feedback.span_id") or (None if "feedback.trace_id" in ea else span_id),
                    time_ns=e["time_unix_nano"] or end_ns,
                    attributes=ea,
                    record_id=f"{trace_id}{span_id}:{e['name']}:{e['time_unix_nano']}",
                )
            )
    if any(k.startswith(ANNOTATION_PREFIXES) for k in attrs):
        target_trace, target_span = (links[0]["trace_id"], links[0]["span_id"]) if links else (trace_id, span_id)
        out.append(
            FeedbackEvent(
                channel="openinference",
                event_name="openinference.annotation",
                trace_id=target_trace,
                span_id=target_span,
                time_ns=end_ns,
                attributes=attrs,
                record_id=f"{trace_id}{span_id}:annotations",
            )
        )


def decode_traces(
    request: ExportTraceServiceRequest,
    *,
    max_attribute_bytes: int = 1024 * 1024,
    feedback_events: Iterable[str] = ("user_feedback", "feedback"),
    received_at_ns: int | None = None,
) -> Decoded:
    """Spans of an OTLP trace export request as a ``span_log`` Arrow table.

    Spans with invalid ids are left out and counted in ``rejected``; over-long attribute values are
    cut to ``max_attribute_bytes`` and reported in ``messages`` (the span is kept).
    """
    received = received_at_ns if received_at_ns is not None else time.time_ns()
    limits = _Limits(max_attribute_bytes)
    fb_names = frozenset(feedback_events)
    rows: list[tuple[Any, ...]] = []  # one tuple per span, in SPAN_SCHEMA order; turned into columns once
    add = rows.append
    rejected = 0
    messages: list[str] = []
    feedback: list[FeedbackEvent] = []
    kinds, codes = SPAN_KINDS, STATUS_CODES
    zero16, zero8 = _ZEROS[16], _ZEROS[8]
    for rs in request.resource_spans:
        _, rjson, service = _resource(rs.resource, limits)
        for ss in rs.scope_spans:
            sname, sver, sattrs = _scope(ss.scope, limits)
            for span in ss.spans:
                raw_t, raw_s, parent_raw = span.trace_id, span.span_id, span.parent_span_id
                # ids inline (this runs per span): valid when of the right size and not all zero
                trace_id = raw_t.hex() if len(raw_t) == 16 and raw_t != zero16 else None
                span_id = raw_s.hex() if len(raw_s) == 8 and raw_s != zero8 else None
                parent = (
                    (parent_raw.hex() if len(parent_raw) == 8 and parent_raw != zero8 else None) if parent_raw else None
                )
                if trace_id is None or span_id is None or (parent_raw and parent is None):
                    rejected += 1
                    if len(messages) < 20:
                        messages.append(
                            f"span {span.name!r}: invalid "
                            + ("trace_id" if trace_id is None else "span_id" if span_id is None else "parent_span_id")
                            + f" ({len(raw_t if trace_id is None else raw_s if span_id is None else parent_raw)}"
                            " bytes or all zero; trace_id must be 16 bytes, span ids 8)"
                        )
                    continue
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                attrs = _attributes(span.attributes, limits)
                events = _events(span, limits) if len(span.events) else None
                links = _links(span, limits) if len(span.links) else None
                k = span.kind
                status = span.status
                code = status.code
                sid = attrs.get("session.id")
                rid = attrs.get("client_request_id")
                model = attrs.get(_MODEL_1) or attrs.get(_MODEL_2) or attrs.get(_MODEL_3)
                # every key in one string, for the substring tests that let almost every span skip the checks
                keys = "\n".join(attrs)
                own_feedback = _own_feedback(attrs) if "user_feedback" in keys or "annotation_status" in keys else None
                carrier = _has_annotations(attrs, keys)
                add(
                    (
                        trace_id,
                        span_id,
                        parent,
                        span.trace_state or None,
                        span.flags or None,
                        span.name,
                        kinds[k] if 0 <= k < 6 else str(k),
                        start,
                        end,
                        (end - start) / 1e6,
                        codes[code] if 0 <= code < 3 else str(code),
                        status.message or None,
                        service,
                        sname,
                        sver,
                        None if sid is None else str(sid),
                        None if rid is None else str(rid),
                        _dumps(attrs, option=_OPT),
                        rjson,
                        sattrs,
                        _json(events) if events else None,
                        _json(links) if links else None,
                        span.dropped_attributes_count,
                        span.dropped_events_count,
                        span.dropped_links_count,
                        None if model is None else str(model),
                        own_feedback,
                        carrier,
                        None if parent or (v := attrs.get("input.value")) is None else str(v),
                        None if parent or (v := attrs.get("output.value")) is None else str(v),
                    )
                )
                if events or carrier:
                    _feedback_from_span(trace_id, span_id, attrs, events or [], links or [], end, fb_names, feedback)
    if limits.truncated:
        messages.append(
            f"{limits.truncated} attribute value(s) longer than {max_attribute_bytes} bytes were truncated "
            "(OTEL_FEEDBACK_MAX_ATTRIBUTE_BYTES)"
        )
    return Decoded(table=_span_table(rows, received), rejected=rejected, messages=messages, feedback=feedback)


_ATTRIBUTES_COLUMN = SPAN_SCHEMA.get_field_index("attributes")
_RECEIVED_TYPE = SPAN_SCHEMA.field("received_at").type
_COMPILED_FIELDS = list(SPAN_SCHEMA)[:-1]


def decode_traces_bytes(
    raw: bytes,
    *,
    max_attribute_bytes: int = 1024 * 1024,
    feedback_events: Iterable[str] = ("user_feedback", "feedback"),
    received_at_ns: int | None = None,
) -> Decoded | None:
    """An ``ExportTraceServiceRequest``'s protobuf bytes decoded by the compiled decoder, straight into Arrow
    buffers (no Python object per span or value, and without holding the GIL).

    Returns None when the compiled decoder is not built, or when the request needs the Python decoder: it is
    not valid protobuf, or has anything to reject, truncate or turn into feedback, or one of the rare shapes
    listed at the top of ``_otlp_fast.c``. The caller then parses the message and calls :func:`decode_traces`,
    which gives the same table (tests/test_decode_compiled.py checks that they agree).
    """
    if _otlp_fast is None:
        return None
    out = _otlp_fast.decode_traces(raw, max_attribute_bytes, tuple(feedback_events))
    if out is None:
        return None
    n, columns = out
    received = received_at_ns if received_at_ns is not None else time.time_ns()
    arrays = [
        pa.Array.from_buffers(
            f.type, n, [None if valid is None else pa.py_buffer(valid), *map(pa.py_buffer, bufs)], null_count=nulls
        )
        for (nulls, valid, *bufs), f in zip(columns, _COMPILED_FIELDS, strict=True)
    ]
    # one value repeated: 3 us for 383 spans, against 18 us through pa.array of an iterator
    arrays.append(pa.repeat(pa.scalar(received, _RECEIVED_TYPE), n))
    return Decoded(table=pa.Table.from_arrays(arrays, schema=SPAN_SCHEMA))


def _span_table(rows: list[tuple[Any, ...]], received: int) -> pa.Table:
    """Row tuples (every field of SPAN_SCHEMA but ``received_at``) as an Arrow table, one column at a time."""
    n = len(rows)
    columns = list(zip(*rows, strict=True)) if n else [()] * (len(SPAN_SCHEMA) - 1)
    arrays = []
    for i, (values, f) in enumerate(zip(columns, SPAN_SCHEMA, strict=False)):
        if i == _ATTRIBUTES_COLUMN:  # orjson's bytes: UTF-8 already, checked by the cast (no str per span)
            arrays.append(pa.array(values, pa.binary()).cast(pa.string()))
        else:
            arrays.append(pa.array(values, f.type))
    arrays.append(pa.repeat(pa.scalar(received, _RECEIVED_TYPE), n))
    return pa.Table.from_arrays(arrays, schema=SPAN_SCHEMA)


def _own_feedback(attrs: dict[str, Any]) -> str | None:
    """The span's own well-known feedback attributes as JSON (every key, null when absent), or None."""
    if not any(k in attrs for k in OWN_FEEDBACK_KEYS):
        return None
    return _dumps({k: attrs.get(k) for k in OWN_FEEDBACK_KEYS}).decode()


def _has_annotations(attrs: dict[str, Any], keys: str) -> bool:
    """``keys``: the attribute names joined by newlines; one substring search over them comes first (every
    span goes through here; carriers are rare)."""
    if "annotations." not in keys and "evaluations." not in keys:
        return False
    return any(k.startswith(ANNOTATION_PREFIXES) for k in attrs)


def decode_logs(
    request: ExportLogsServiceRequest,
    *,
    max_attribute_bytes: int = 1024 * 1024,
    feedback_events: Iterable[str] = ("user_feedback", "feedback"),
    received_at_ns: int | None = None,
) -> Decoded:
    """Log records of an OTLP logs export request as a ``log_records`` Arrow table.

    Records whose event name (``event_name`` field, else an ``event.name`` attribute) is a feedback
    event or ``gen_ai.evaluation.result`` are also returned as :class:`FeedbackEvent`\\ s.
    Records with a malformed trace or span id are rejected (an absent id is fine).
    """
    received = received_at_ns if received_at_ns is not None else time.time_ns()
    limits = _Limits(max_attribute_bytes)
    fb_names = frozenset(feedback_events) | {EVALUATION_EVENT}
    cols: dict[str, list[Any]] = {name: [] for name in LOG_SCHEMA.names}
    rejected = 0
    messages: list[str] = []
    feedback: list[FeedbackEvent] = []
    for rl in request.resource_logs:
        _, rjson, service = _resource(rl.resource, limits)
        for sl in rl.scope_logs:
            sname, sver, _ = _scope(sl.scope, limits)
            for rec in sl.log_records:
                raw_t, raw_s = rec.trace_id, rec.span_id
                trace_id = _hex_id(raw_t, 16) if raw_t else None
                span_id = _hex_id(raw_s, 8) if raw_s else None
                if (raw_t and trace_id is None) or (raw_s and span_id is None):
                    rejected += 1
                    if len(messages) < 20:
                        messages.append(
                            f"log record: invalid {'trace_id' if raw_t and trace_id is None else 'span_id'} "
                            "(trace_id must be 16 bytes, span_id 8, not all zero)"
                        )
                    continue
                attrs = _attributes(rec.attributes, limits)
                body = _value(rec.body, limits) if rec.HasField("body") else None
                event_name = rec.event_name or None
                if event_name is None:
                    en = attrs.get("event.name")
                    event_name = en if isinstance(en, str) and en else None
                t = rec.time_unix_nano or rec.observed_time_unix_nano or received
                cols["time"].append(rec.time_unix_nano or None)
                cols["observed_time"].append(rec.observed_time_unix_nano or None)
                cols["trace_id"].append(trace_id)
                cols["span_id"].append(span_id)
                cols["flags"].append(rec.flags or None)
                cols["severity_number"].append(rec.severity_number or None)
                cols["severity_text"].append(rec.severity_text or None)
                cols["event_name"].append(event_name)
                cols["body"].append(None if body is None else _json(body))
                cols["attributes"].append(_json(attrs))
                cols["resource_attributes"].append(rjson)
                cols["service_name"].append(service)
                cols["scope_name"].append(sname)
                cols["scope_version"].append(sver)
                cols["dropped_attributes_count"].append(rec.dropped_attributes_count)
                if event_name in fb_names:
                    feedback.append(
                        FeedbackEvent(
                            channel="otlp_log",
                            event_name=event_name,
                            trace_id=trace_id,
                            span_id=span_id,
                            time_ns=t,
                            attributes=attrs,
                            body=body,
                            # the record's own bytes: an exporter's retry of it is the same feedback
                            record_id="otlp_log:"
                            + hashlib.blake2b(rec.SerializeToString(deterministic=True), digest_size=16).hexdigest(),
                        )
                    )
    cols["received_at"] = [received] * len(cols["time"])
    if limits.truncated:
        messages.append(
            f"{limits.truncated} attribute value(s) longer than {max_attribute_bytes} bytes were truncated "
            "(OTEL_FEEDBACK_MAX_ATTRIBUTE_BYTES)"
        )
    table = pa.Table.from_pydict(cols, schema=LOG_SCHEMA)
    return Decoded(table=table, rejected=rejected, messages=messages, feedback=feedback)
