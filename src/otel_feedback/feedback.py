"""What a valid feedback record is, and how each way in becomes :class:`FeedbackRow`\\ s. Pure: no I/O.

Rules (documented in the README, enforced here, tested in ``tests/test_feedback.py``):

* ids: ``trace_id`` 32 hex digits, ``span_id`` 16 (upper case accepted, stored lower case);
* a record sets attributes (a JSON merge patch: ``null`` removes a key) and/or is a named annotation;
  attribute keys are non-empty strings of at most 256 characters; values are strings, booleans,
  numbers, ``null`` or arrays of those (no nested objects, as in OpenTelemetry attributes);
* strings are at most ``max_comment_bytes`` (UTF-8) and a record sets at most ``max_patch_keys`` keys;
* ``user_feedback`` is ``positive`` / ``negative`` / ``neutral`` (also accepted and normalised:
  ``thumbs_up``/``up``/``👍``/``true``/``1``, ``thumbs_down``/``down``/``👎``/``false``/``-1``/``0``);
  ``user_feedback_rating`` is a number from 1 to 5 - unless the feedback config declares otherwise;
* the feedback time is ``user_feedback_timestamp`` (ISO 8601, or epoch seconds), else the record's
  ``timestamp``, else the arrival time;
* unknown fields in a request body are refused (400 naming the field), so typos do not silently vanish;
* a request with any invalid record writes nothing (HTTP/gRPC); feedback found in telemetry (log
  records, span events, annotation spans) is checked record by record, and a bad one is skipped and
  reported while its neighbours are kept.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from .errors import InvalidRequest
from .model import ANNOTATOR_KINDS, FEEDBACK_SCHEMA, TARGET_KEYS, FeedbackEvent, FeedbackRow

_HEX = re.compile(r"[0-9a-fA-F]+")
MAX_KEY_CHARS = 256
MAX_ID_CHARS = 128
EVALUATION_EVENT = "gen_ai.evaluation.result"

POSITIVE = ("positive", "thumbs_up", "thumbsup", "up", "good", "like", "👍", "true", "1", "yes")
NEGATIVE = ("negative", "thumbs_down", "thumbsdown", "down", "bad", "dislike", "👎", "false", "-1", "0", "no")
NEUTRAL = ("neutral",)

FEEDBACK_KINDS = ("categorical", "numeric", "boolean", "text")


@dataclass(frozen=True)
class Limits:
    """Size limits of feedback records (from :class:`otel_feedback.config.Settings`)."""

    max_comment_bytes: int = 16 * 1024
    max_patch_keys: int = 128


@dataclass(frozen=True)
class Declaration:
    """A declared feedback name: what values it takes."""

    name: str
    type: str
    labels: tuple[str, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    description: str | None = None

    def check(self, value: Any, where: str) -> Any:
        """``value`` if it fits this declaration (normalised), else :class:`InvalidRequest`."""
        if value is None:
            return None
        if self.type == "categorical":
            if not isinstance(value, str) or (self.labels and value not in self.labels):
                raise InvalidRequest(
                    f"{where}: {value!r} is not one of {', '.join(self.labels)} (declared for {self.name!r})"
                )
            return value
        if self.type == "numeric":
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidRequest(f"{where}: {self.name!r} takes a number, got {value!r}")
            if (self.min_value is not None and value < self.min_value) or (
                self.max_value is not None and value > self.max_value
            ):
                raise InvalidRequest(
                    f"{where}: {value!r} is out of range for {self.name!r} "
                    f"({_fmt(self.min_value)} to {_fmt(self.max_value)})"
                )
            return value
        if self.type == "boolean":
            if not isinstance(value, bool):
                raise InvalidRequest(f"{where}: {self.name!r} takes true or false, got {value!r}")
            return value
        if not isinstance(value, str):
            raise InvalidRequest(f"{where}: {self.name!r} takes text, got {value!r}")
        return value

    def to_json(self) -> dict[str, Any]:
        """The declaration in the config-file shape (what ``GET /v1/feedback_configs`` answers)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.labels:
            out["labels"] = list(self.labels)
        if self.min_value is not None:
            out["min"] = self.min_value
        if self.max_value is not None:
            out["max"] = self.max_value
        if self.description is not None:
            out["description"] = self.description
        return out


def declarations_table(decls: Sequence[Declaration], declared_at_ns: int) -> pa.Table:
    """Rows for the append-only ``feedback_config`` table (the latest per name is in force)."""
    return pa.table(
        {
            "name": pa.array([d.name for d in decls], pa.string()),
            "type": pa.array([d.type for d in decls], pa.string()),
            "labels": pa.array([list(d.labels) or None for d in decls], pa.list_(pa.string())),
            "min_value": pa.array([d.min_value for d in decls], pa.float64()),
            "max_value": pa.array([d.max_value for d in decls], pa.float64()),
            "description": pa.array([d.description for d in decls], pa.string()),
            "declared_at": pa.array([declared_at_ns] * len(decls), pa.timestamp("ns")),
        }
    )


def parse_declarations(body: Any, where: str = "body") -> list[Declaration]:
    """``{"feedback": [...]}``, a list, or one declaration object -> declarations (all or nothing)."""
    if isinstance(body, dict) and "feedback" in body:
        _no_unknown(body, {"feedback"}, where)
        items, where = body["feedback"], f"{where}.feedback"
    elif isinstance(body, dict):
        items = [body]
    else:
        items = body
    if not isinstance(items, list) or not items:
        raise InvalidRequest(f'{where}: expected {{"feedback": [{{"name": ..., "type": ...}}, ...]}}')
    return [parse_declaration(item, f"{where}[{i}]") for i, item in enumerate(items)]


def _fmt(x: float | None) -> str:
    if x is None:
        return "any"
    return str(int(x)) if float(x).is_integer() else str(x)


DEFAULT_DECLARATIONS = (
    Declaration("user_feedback_rating", "numeric", min_value=1, max_value=5, description="1-5 stars"),
    Declaration("user_feedback_category", "text", description="why the answer was good or bad"),
    Declaration("user_feedback_comment", "text", description="the user's own words"),
)


@dataclass(frozen=True)
class FeedbackConfig:
    """Declared feedback names; ``strict`` refuses names that are not declared."""

    declarations: Mapping[str, Declaration] = field(default_factory=lambda: {d.name: d for d in DEFAULT_DECLARATIONS})
    strict: bool = False

    @classmethod
    def from_json(cls, doc: Any, *, strict: bool = False, where: str = "feedback config") -> FeedbackConfig:
        """Parse ``{"feedback": [{"name", "type", "labels"?, "min"?, "max"?, "description"?}]}``."""
        items = doc.get("feedback") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise InvalidRequest(f'{where}: expected {{"feedback": [ ... ]}}')
        decls = {d.name: d for d in DEFAULT_DECLARATIONS}
        for i, item in enumerate(items):
            decl = parse_declaration(item, f"{where}: feedback[{i}]")
            decls[decl.name] = decl
        return cls(decls, strict)

    def with_declaration(self, decl: Declaration) -> FeedbackConfig:
        return FeedbackConfig({**self.declarations, decl.name: decl}, self.strict)


def parse_declaration(item: Any, where: str) -> Declaration:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}: expected an object")
    _no_unknown(item, {"name", "type", "labels", "min", "max", "description"}, where)
    name = _name(item.get("name"), f"{where}.name")
    kind = item.get("type")
    if kind not in FEEDBACK_KINDS:
        raise InvalidRequest(f"{where}.type: must be one of {', '.join(FEEDBACK_KINDS)}, got {kind!r}")
    labels = item.get("labels") or ()
    if kind == "categorical" and (
        not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels)
    ):
        raise InvalidRequest(f"{where}.labels: a categorical feedback needs a non-empty list of labels")
    lo, hi = item.get("min"), item.get("max")
    for key, v in (("min", lo), ("max", hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise InvalidRequest(f"{where}.{key}: must be a number")
    if lo is not None and hi is not None and lo > hi:
        raise InvalidRequest(f"{where}: min ({lo}) is greater than max ({hi})")
    desc = item.get("description")
    return Declaration(name, kind, tuple(labels), lo, hi, desc if isinstance(desc, str) else None)


# -- field checks --------------------------------------------------------------------------------


def _no_unknown(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InvalidRequest(
            f"{where}: unknown field {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; allowed: {', '.join(sorted(allowed))}"
        )


def check_id(value: Any, size: int, what: str) -> str:
    """A hex id of ``size`` characters, lower-cased; :class:`InvalidRequest` naming ``what`` if not."""
    if not isinstance(value, str) or len(value) != size or not _HEX.fullmatch(value):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
        raise InvalidRequest(f"{what}: must be {size} hex digits, got {shown!r}")
    if not value.strip("0"):
        raise InvalidRequest(f"{what}: must not be all zeros")
    return value.lower()


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{where}: must be a non-empty string")
    if len(value) > MAX_KEY_CHARS:
        raise InvalidRequest(f"{where}: longer than {MAX_KEY_CHARS} characters")
    return value


def _text(value: Any, where: str, limits: Limits, *, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}: must be a string, got {type(value).__name__}")
    if len(value) > limits.max_comment_bytes // 4 and len(value.encode()) > limits.max_comment_bytes:
        raise InvalidRequest(
            f"{where}: {len(value.encode())} bytes, over the limit of {limits.max_comment_bytes} "
            "(OTEL_FEEDBACK_MAX_COMMENT_BYTES)"
        )
    return value


def _score(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{where}: must be a finite number, got {value!r}")
    return float(value)


def _scalar(value: Any, where: str, limits: Limits) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{where}: must be a finite number")
        return value
    if isinstance(value, str):
        return _text(value, where, limits)
    raise InvalidRequest(
        f"{where}: attribute values are strings, numbers, booleans, null or arrays of those; got {type(value).__name__}"
    )


def normalize_thumb(value: Any, where: str) -> str | None:
    """``user_feedback`` as ``positive``/``negative``/``neutral``."""
    if value is None:
        return None
    key = str(value).strip().lower() if not isinstance(value, bool) else ("true" if value else "false")
    if key in POSITIVE:
        return "positive"
    if key in NEGATIVE:
        return "negative"
    if key in NEUTRAL:
        return "neutral"
    raise InvalidRequest(
        f"{where}: {value!r} is not a thumb; use positive, negative or neutral (or thumbs_up/thumbs_down, "
        "true/false, 1/-1)"
    )


def check_attributes(attrs: Any, where: str, limits: Limits, config: FeedbackConfig) -> dict[str, Any]:
    """A validated merge patch of attributes."""
    if not isinstance(attrs, dict):
        raise InvalidRequest(f"{where}: must be an object of attribute names to values")
    if len(attrs) > limits.max_patch_keys:
        raise InvalidRequest(
            f"{where}: {len(attrs)} attributes, over the limit of {limits.max_patch_keys} "
            "(OTEL_FEEDBACK_MAX_PATCH_KEYS)"
        )
    out: dict[str, Any] = {}
    declarations = config.declarations
    # a string of at most this many characters cannot be over the byte limit (UTF-8: <= 4 bytes each)
    short = limits.max_comment_bytes // 4
    for key, value in attrs.items():
        # The common case (a short string, a number, a bool, null) is checked inline; the messages, and the
        # ``where`` text they need, are only built for what fails or needs a closer look.
        if type(key) is not str or not key.strip() or len(key) > MAX_KEY_CHARS:
            _name(key, f"{where}: attribute name")
        t = type(value)
        if not (
            value is None
            or t is int
            or t is bool
            or (t is str and len(value) <= short)
            or (t is float and math.isfinite(value))
        ):
            w = f"{where}.{key}"
            if isinstance(value, list):
                value = [_scalar(v, f"{w}[{i}]", limits) for i, v in enumerate(value)]
            else:
                value = _scalar(value, w, limits)
        decl = declarations.get(key)
        if decl is None and key == "user_feedback":
            value = normalize_thumb(value, f"{where}.{key}")
        elif decl is not None:
            value = decl.check(value, f"{where}.{key}")
        elif config.strict and not key.startswith("user_feedback"):
            raise InvalidRequest(f"{where}.{key}: {key!r} is not a declared feedback name (strict mode)")
        out[key] = value
    return out


def parse_time(value: Any, where: str) -> int:
    """ISO 8601 text (``Z`` or an offset; naive means UTC) or epoch seconds -> nanoseconds."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{where}: must be an ISO 8601 time or epoch seconds, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise InvalidRequest(f"{where}: must be a time, got {value!r}")
        return int(value) if value > 1e17 else int(value * 1_000_000_000)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidRequest(f"{where}: {value!r} is not an ISO 8601 time (e.g. 2026-11-23T10:00:00Z)") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    raise InvalidRequest(f"{where}: must be an ISO 8601 time or epoch seconds, got {type(value).__name__}")


def _kind(value: Any, where: str, default: str | None) -> str | None:
    if value is None:
        return default
    if not isinstance(value, str) or value.upper() not in ANNOTATOR_KINDS:
        raise InvalidRequest(f"{where}: must be one of {', '.join(ANNOTATOR_KINDS)}, got {value!r}")
    return value.upper()


def _feedback_id(value: Any, where: str) -> str:
    if value is None:
        return os.urandom(16).hex()  # random like uuid4().hex, without its ~5 us per record
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise InvalidRequest(f"{where}: must be a non-empty string of at most {MAX_ID_CHARS} characters")
    return value


# -- one record ------------------------------------------------------------------------------------

RECORD_FIELDS = {
    "id",
    "trace_id",
    "span_id",
    "target",
    "attributes",
    "name",
    "label",
    "score",
    "explanation",
    "expected",
    "error",
    "metadata",
    "source",
    "timestamp",
}
PATCH_FIELDS = {
    "id",
    "attributes",
    "name",
    "label",
    "score",
    "explanation",
    "expected",
    "error",
    "metadata",
    "source",
    "timestamp",
}


def parse_record(
    body: Any,
    *,
    channel: str,
    limits: Limits,
    config: FeedbackConfig,
    received_at_ns: int | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
    where: str = "body",
    default_kind: str = "HUMAN",
) -> FeedbackRow:
    """One feedback record from a JSON object.

    With ``trace_id`` (and ``span_id``) given, as for ``PATCH /v1/traces/{trace_id}/spans/{span_id}``,
    the body may not name a target; otherwise it names one: ``trace_id`` (+ ``span_id``) or
    ``target: {"attribute": "session.id" | "client_request_id", "value": "..."}``.
    """
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where}: expected a JSON object")
    in_path = trace_id is not None
    _no_unknown(body, PATCH_FIELDS if in_path else RECORD_FIELDS, where)
    received = received_at_ns if received_at_ns is not None else time.time_ns()
    target_key = target_value = None
    if in_path:
        trace_id = check_id(trace_id, 32, "trace_id")
        span_id = check_id(span_id, 16, "span_id") if span_id is not None else None
    else:
        tid, sid, target = body.get("trace_id"), body.get("span_id"), body.get("target")
        if target is not None:
            if tid is not None or sid is not None:
                raise InvalidRequest(f"{where}: give either trace_id/span_id or target, not both")
            if not isinstance(target, dict):
                raise InvalidRequest(f'{where}.target: expected {{"attribute": ..., "value": ...}}')
            _no_unknown(target, {"attribute", "value"}, f"{where}.target")
            target_key = target.get("attribute")
            if target_key not in TARGET_KEYS:
                raise InvalidRequest(
                    f"{where}.target.attribute: must be one of {', '.join(TARGET_KEYS)}, got {target_key!r}"
                )
            tv = target.get("value")
            if isinstance(tv, bool) or not isinstance(tv, str | int) or tv == "":
                raise InvalidRequest(f"{where}.target.value: must be a non-empty string")
            target_value = str(tv)
        elif tid is not None:
            trace_id = check_id(tid, 32, f"{where}.trace_id")
            span_id = check_id(sid, 16, f"{where}.span_id") if sid is not None else None
        elif sid is not None:
            span_id = check_id(sid, 16, f"{where}.span_id")
        else:
            raise InvalidRequest(f"{where}: name a target: trace_id (and span_id), span_id, or target")
    attrs = check_attributes(body.get("attributes", {}), f"{where}.attributes", limits, config)
    name = body.get("name")
    if name is not None:
        name = _name(name, f"{where}.name")
    label = _text(body.get("label"), f"{where}.label", limits)
    score = _score(body.get("score"), f"{where}.score")
    if name is not None:
        decl = config.declarations.get(name)
        if decl is not None:
            if decl.type == "numeric":
                decl.check(score, f"{where}.score")
            elif decl.type in ("categorical", "text"):
                decl.check(label, f"{where}.label")
        elif config.strict:
            raise InvalidRequest(f"{where}.name: {name!r} is not a declared feedback name (strict mode)")
    elif label is not None or score is not None:
        raise InvalidRequest(f'{where}: label and score belong to a named annotation; add "name"')
    if not attrs and name is None:
        raise InvalidRequest(f"{where}: sets nothing; give attributes or a named annotation (name + label/score)")
    source = body.get("source") or {}
    if not isinstance(source, dict):
        raise InvalidRequest(f'{where}.source: expected {{"kind": "HUMAN|LLM|CODE", "id": "..."}}')
    _no_unknown(source, {"kind", "id"}, f"{where}.source")
    source_id = source.get("id")
    if source_id is not None and not isinstance(source_id, str | int):
        raise InvalidRequest(f"{where}.source.id: must be a string")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest(f"{where}.metadata: must be an object")
    expected = body.get("expected")
    if expected is not None:
        _text(orjson.dumps(expected).decode(), f"{where}.expected", limits)
    ts = attrs.get("user_feedback_timestamp")
    if ts is not None:
        feedback_time = parse_time(ts, f"{where}.attributes.user_feedback_timestamp")
    elif body.get("timestamp") is not None:
        feedback_time = parse_time(body["timestamp"], f"{where}.timestamp")
    else:
        feedback_time = received
    return FeedbackRow(
        feedback_id=_feedback_id(body.get("id"), f"{where}.id"),
        channel=channel,
        received_at_ns=received,
        feedback_time_ns=feedback_time,
        trace_id=trace_id,
        span_id=span_id,
        target_key=target_key,
        target_value=target_value,
        attributes=attrs,
        name=name,
        label=label,
        score=score,
        explanation=_text(body.get("explanation"), f"{where}.explanation", limits),
        expected=expected,
        error=_text(body.get("error"), f"{where}.error", limits),
        metadata=metadata,
        annotator_kind=_kind(source.get("kind"), f"{where}.source.kind", default_kind),
        source_id=None if source_id is None else str(source_id),
    )


def parse_batch(body: Any, **kwargs: Any) -> list[FeedbackRow]:
    """``{"records": [...]}`` (or a bare list) -> rows; any bad record fails the whole batch."""
    records = body.get("records") if isinstance(body, dict) else body
    if isinstance(body, dict):
        _no_unknown(body, {"records"}, "body")
    if not isinstance(records, list):
        raise InvalidRequest('body: expected {"records": [ ... ]}')
    if not records:
        return []
    received = kwargs.pop("received_at_ns", None) or time.time_ns()
    return [parse_record(r, where=f"records[{i}]", received_at_ns=received, **kwargs) for i, r in enumerate(records)]


# -- Phoenix-compatible annotations ----------------------------------------------------------------

PHOENIX_FIELDS = {"span_id", "trace_id", "name", "annotator_kind", "result", "metadata", "identifier"}


def parse_phoenix(
    body: Any, *, level: str, limits: Limits, config: FeedbackConfig, received_at_ns: int | None = None
) -> list[FeedbackRow]:
    """Phoenix's ``{"data": [{span_id|trace_id, name, annotator_kind, result: {label, score, explanation},
    metadata, identifier}]}`` -> rows. The ``identifier`` becomes the source id: as in Phoenix, annotations
    with one name on one target but different identifiers are kept apart, and the latest per identifier wins."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise InvalidRequest('body: expected {"data": [ ... ]}')
    received = received_at_ns or time.time_ns()
    rows = []
    for i, item in enumerate(body["data"]):
        where = f"data[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: expected an object")
        _no_unknown(item, PHOENIX_FIELDS, where)
        result = item.get("result") or {}
        if not isinstance(result, dict):
            raise InvalidRequest(f"{where}.result: expected an object")
        _no_unknown(result, {"label", "score", "explanation"}, f"{where}.result")
        if level == "span":
            target = {"span_id": item.get("span_id")}
            if item.get("span_id") is None:
                raise InvalidRequest(f"{where}.span_id: required")
        else:
            target = {"trace_id": item.get("trace_id")}
            if item.get("trace_id") is None:
                raise InvalidRequest(f"{where}.trace_id: required")
        identifier = item.get("identifier")
        if identifier is not None and not isinstance(identifier, str):
            raise InvalidRequest(f"{where}.identifier: must be a string")
        record = {
            **target,
            "name": item.get("name"),
            "label": result.get("label"),
            "score": result.get("score"),
            "explanation": result.get("explanation"),
            "metadata": item.get("metadata") or None,
            "source": {"kind": item.get("annotator_kind") or "HUMAN"},
        }
        if identifier:
            # Phoenix keys an annotation by (target, name, identifier) and updates it in place; here the
            # identifier names the source, so each identifier's latest annotation is the current one
            record["source"]["id"] = identifier
        if record["name"] is None:
            raise InvalidRequest(f"{where}.name: required")
        rows.append(
            parse_record(
                record,
                channel=f"phoenix_{level}_annotation",
                limits=limits,
                config=config,
                received_at_ns=received,
                where=where,
            )
        )
    return rows


# -- feedback found in telemetry -------------------------------------------------------------------

_RESERVED = {
    "event.name",
    "feedback.id",
    "feedback.trace_id",
    "feedback.span_id",
    "feedback.name",
    "feedback.label",
    "feedback.score",
    "feedback.explanation",
    "feedback.source.kind",
    "feedback.annotator_kind",
    "feedback.source.id",
    "feedback.source_id",
    "feedback.expected",
    "feedback.error",
}
_ANNOTATION_RE = re.compile(
    r"^(?P<scope>annotations|trace\.annotations|session\.annotations|evaluations)\.(?P<i>\d+)\."
    r"(?:annotation|evaluation)\.(?P<field>name|score|label|explanation|annotator_kind|identifier|metadata)$"
)


def _from_event(ev: FeedbackEvent, limits: Limits, config: FeedbackConfig) -> list[FeedbackRow]:
    a = ev.attributes
    if ev.channel == "openinference":
        return _from_carrier(ev, limits, config)
    base: dict[str, Any] = {}
    if ev.trace_id:
        base["trace_id"] = ev.trace_id
        if ev.span_id:
            base["span_id"] = ev.span_id
    elif ev.span_id:
        base["span_id"] = ev.span_id
    elif isinstance(a.get("session.id"), str):
        base["target"] = {"attribute": "session.id", "value": a["session.id"]}
    elif isinstance(a.get("client_request_id"), str):
        base["target"] = {"attribute": "client_request_id", "value": a["client_request_id"]}
    record_id = a.get("feedback.id") or ev.record_id
    if ev.event_name == EVALUATION_EVENT:
        record: dict[str, Any] = {
            **base,
            "name": a.get("gen_ai.evaluation.name"),
            "label": a.get("gen_ai.evaluation.score.label"),
            "score": a.get("gen_ai.evaluation.score.value"),
            "explanation": a.get("gen_ai.evaluation.explanation"),
            "error": a.get("error.type"),
            "source": {"kind": "LLM"},
        }
        if isinstance(a.get("gen_ai.response.model"), str):
            record["source"]["id"] = a["gen_ai.response.model"]
    else:
        attrs = {k: v for k, v in a.items() if k not in _RESERVED and k not in ("session.id", "client_request_id")}
        if isinstance(ev.body, dict):
            attrs.update(ev.body)
        record = {
            **base,
            "attributes": attrs,
            "name": a.get("feedback.name"),
            "label": a.get("feedback.label"),
            "score": a.get("feedback.score"),
            "explanation": a.get("feedback.explanation"),
            "expected": a.get("feedback.expected"),
            "error": a.get("feedback.error"),
            "source": {
                "kind": a.get("feedback.source.kind") or a.get("feedback.annotator_kind"),
                "id": a.get("feedback.source.id") or a.get("feedback.source_id") or a.get("user.id"),
            },
        }
        record["source"] = {k: v for k, v in record["source"].items() if v is not None}
    record = {k: v for k, v in record.items() if v is not None}
    if record_id is not None:
        record["id"] = str(record_id)[:MAX_ID_CHARS]
    if "attributes" not in record and "name" not in record:
        raise InvalidRequest(f"{ev.event_name} event sets nothing")
    where = f"{ev.channel} {ev.event_name!r}"
    row = parse_record(
        record,
        channel=ev.channel,
        limits=limits,
        config=config,
        where=where,
        default_kind="LLM" if ev.event_name == EVALUATION_EVENT else "HUMAN",
    )
    if "user_feedback_timestamp" not in row.attributes:
        row = _with_time(row, ev.time_ns)
    return [row]


def _with_time(row: FeedbackRow, time_ns: int) -> FeedbackRow:
    from dataclasses import replace

    return replace(row, feedback_time_ns=time_ns or row.received_at_ns)


def _from_carrier(ev: FeedbackEvent, limits: Limits, config: FeedbackConfig) -> list[FeedbackRow]:
    """OpenInference annotation attributes on a carrier span -> one row per annotation index."""
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    for key, value in ev.attributes.items():
        m = _ANNOTATION_RE.match(key)
        if m:
            groups.setdefault((m["scope"], int(m["i"])), {})[m["field"]] = value
    rows = []
    for (scope, i), g in sorted(groups.items()):
        record: dict[str, Any] = {
            "name": g.get("name"),
            "label": g.get("label"),
            "score": g.get("score"),
            "explanation": g.get("explanation"),
            "source": {"kind": g.get("annotator_kind")} if g.get("annotator_kind") else {},
        }
        meta = g.get("metadata")
        if isinstance(meta, str):
            try:
                meta = orjson.loads(meta)
            except orjson.JSONDecodeError:
                meta = {"value": meta}
        if isinstance(meta, dict):
            record["metadata"] = meta
        if scope == "session.annotations":
            sid = ev.attributes.get("session.id")
            if not isinstance(sid, str) or not sid:
                raise InvalidRequest(f"{scope}.{i}: a session annotation needs a session.id attribute")
            record["target"] = {"attribute": "session.id", "value": sid}
        elif scope == "trace.annotations":
            record["trace_id"] = ev.trace_id
        else:
            record["trace_id"], record["span_id"] = ev.trace_id, ev.span_id
        ident = g.get("identifier")
        if ident:  # as for Phoenix: the identifier names the annotator, whose latest annotation is current
            record["source"]["id"] = str(ident)
        record["id"] = f"{ev.record_id}:{scope}:{i}"  # the carrier delivered again is the same record
        record = {k: v for k, v in record.items() if v is not None}
        row = parse_record(
            record, channel="openinference", limits=limits, config=config, where=f"{scope}.{i}", default_kind="HUMAN"
        )
        rows.append(_with_time(row, ev.time_ns))
    return rows


def rows_from_events(
    events: Iterable[FeedbackEvent], settings: Any, config: FeedbackConfig | None = None
) -> tuple[list[FeedbackRow], list[str]]:
    """Feedback rows from telemetry; bad ones are skipped and described in the second value."""
    limits = Limits(settings.max_comment_bytes, settings.max_patch_keys)
    config = config or FeedbackConfig(strict=getattr(settings, "strict", False))
    rows: list[FeedbackRow] = []
    problems: list[str] = []
    for ev in events:
        try:
            rows.extend(_from_event(ev, limits, config))
        except InvalidRequest as exc:
            problems.append(f"feedback skipped: {exc}")
    return rows, problems


# -- rows -> Arrow -----------------------------------------------------------------------------------


def _json_or_none(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def to_table(rows: Sequence[FeedbackRow]) -> pa.Table:
    """``feedback_log`` rows as an Arrow table (the writer adds ``seq``)."""
    cols = {
        "feedback_id": [r.feedback_id for r in rows],
        "trace_id": [r.trace_id for r in rows],
        "span_id": [r.span_id for r in rows],
        "target_key": [r.target_key for r in rows],
        "target_value": [r.target_value for r in rows],
        "attributes": [orjson.dumps(r.attributes).decode() for r in rows],
        "name": [r.name for r in rows],
        "label": [r.label for r in rows],
        "score": [r.score for r in rows],
        "explanation": [r.explanation for r in rows],
        "expected": [_json_or_none(r.expected) for r in rows],
        "error": [r.error for r in rows],
        "metadata": [_json_or_none(r.metadata) for r in rows],
        "annotator_kind": [r.annotator_kind for r in rows],
        "source_id": [r.source_id for r in rows],
        "feedback_time": [r.feedback_time_ns for r in rows],
        "received_at": [r.received_at_ns for r in rows],
        "channel": [r.channel for r in rows],
    }
    return pa.Table.from_pydict(cols, schema=FEEDBACK_SCHEMA)
