"""Talking to a running server from Python: SQL results, and sending feedback."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import httpx
import pyarrow as pa

from .errors import InvalidRequest, OtelFeedbackError, QueryError, StoreUnavailable
from .store.query import Result

_log = logging.getLogger(__name__)


def _error(resp: httpx.Response) -> OtelFeedbackError:
    try:
        message = resp.json().get("error") or resp.text
    except ValueError:
        message = resp.text
    if resp.status_code == 503:
        return StoreUnavailable(message)
    return QueryError(message)


def query_server(
    url: str, sql: str, params: dict[str, Any] | None = None, *, max_rows: int | None = None, timeout: float = 60.0
) -> Result:
    """Run read-only SQL on the server at ``url``; the rows as a :class:`Result`."""
    body: dict[str, Any] = {"sql": sql, "params": params or None}
    if max_rows is not None:
        body["max_rows"] = max_rows
    try:
        resp = httpx.post(url.rstrip("/") + "/v1/query", json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise StoreUnavailable(f"cannot reach the server at {url}: {exc}") from None
    if resp.status_code != 200:
        raise _error(resp)
    doc = resp.json()
    return Result(doc["columns"], doc["types"], [tuple(r) for r in doc["rows"]], doc["truncated"])


def arrow_from_server(
    url: str, sql: str, params: dict[str, Any] | None = None, *, max_rows: int | None = None, timeout: float = 300.0
) -> tuple[pa.RecordBatchReader, list[str]]:
    """Run read-only SQL on the server; the result as an Arrow stream and its JSON-typed columns."""
    body: dict[str, Any] = {"sql": sql, "params": params or None, "format": "arrow"}
    if max_rows is not None:
        body["max_rows"] = max_rows
    try:
        resp = httpx.post(url.rstrip("/") + "/v1/query", json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise StoreUnavailable(f"cannot reach the server at {url}: {exc}") from None
    if resp.status_code != 200:
        raise _error(resp)
    reader = pa.ipc.open_stream(resp.content)
    return reader, []


def _record(
    trace_id: str | None,
    span_id: str | None,
    *,
    id: str | None,
    attributes: dict[str, Any] | None,
    user_feedback: Any,
    rating: float | None,
    category: str | None,
    comment: str | None,
    name: str | None,
    label: str | None,
    score: float | None,
    explanation: str | None,
    expected: Any,
    error: str | None,
    source_kind: str | None,
    source_id: str | None,
    timestamp: Any,
    target: tuple[str, str] | None,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON record both the HTTP API and ``record_feedback`` take (see README, "Feedback records")."""
    attrs = dict(attributes or {})
    for key, value in (
        ("user_feedback", user_feedback),
        ("user_feedback_rating", rating),
        ("user_feedback_category", category),
        ("user_feedback_comment", comment),
    ):
        if value is not None:
            attrs[key] = value
    record: dict[str, Any] = {"id": id or uuid.uuid4().hex}
    if target is not None:
        record["target"] = {"attribute": target[0], "value": target[1]}
    else:
        if trace_id is not None:
            record["trace_id"] = trace_id
        if span_id is not None:
            record["span_id"] = span_id
    if attrs:
        record["attributes"] = attrs
    for key, value in (
        ("name", name),
        ("label", label),
        ("score", score),
        ("explanation", explanation),
        ("expected", expected),
        ("error", error),
        ("timestamp", timestamp),
        ("metadata", metadata),
    ):
        if value is not None:
            record[key] = value
    source = {k: v for k, v in (("kind", source_kind), ("id", source_id)) if v is not None}
    if source:
        record["source"] = source
    return record


class FeedbackClient:
    """Sends feedback to a running otel-feedback server, from the app that served the answer.

    ``send`` retries safely (each record carries one id, so a retry can never count twice), backs off
    on "slow down" answers, and never raises into the app unless ``raise_errors=True``: failures are
    logged once and ``send`` returns None. ``transport="grpc"`` uses the FeedbackService on the
    OTLP gRPC port (``grpc_target``, default host:4317) instead of HTTP.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        transport: str = "http",
        grpc_target: str | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        raise_errors: bool = False,
    ) -> None:
        from .config import Settings

        if transport not in ("http", "grpc"):
            raise ValueError(f"transport must be 'http' or 'grpc', got {transport!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = (url or Settings.load().url or "http://127.0.0.1:4318").rstrip("/")
        self.transport = transport
        self.grpc_target = grpc_target or f"{httpx.URL(self.url).host}:4317"
        self.timeout = timeout
        self.retries = retries
        self.raise_errors = raise_errors
        self._http: httpx.Client | None = None
        self._channel: Any = None
        self._warned: set[str] = set()

    def send(
        self,
        trace_id: str | None = None,
        span_id: str | None = None,
        *,
        id: str | None = None,
        attributes: dict[str, Any] | None = None,
        user_feedback: Any = None,
        rating: float | None = None,
        category: str | None = None,
        comment: str | None = None,
        name: str | None = None,
        label: str | None = None,
        score: float | None = None,
        explanation: str | None = None,
        expected: Any = None,
        error: str | None = None,
        source_kind: str | None = None,
        source_id: str | None = None,
        timestamp: Any = None,
        target: tuple[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str | None:
        """Send one feedback record; its id once the server has stored it, else None (or raise)."""
        record = _record(
            trace_id, span_id, id=id, attributes=attributes, user_feedback=user_feedback, rating=rating,
            category=category, comment=comment, name=name, label=label, score=score, explanation=explanation,
            expected=expected, error=error, source_kind=source_kind, source_id=source_id, timestamp=timestamp,
            target=target, metadata=metadata,
        )  # fmt: skip
        delay = 0.2
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return self._send_grpc(record) if self.transport == "grpc" else self._send_http(record)
            except _Retry as exc:
                last = exc.error
                if attempt < self.retries:
                    time.sleep(min(exc.after or delay, 5.0))
                    delay *= 2
            except OtelFeedbackError as exc:
                last = exc
                break
            except Exception as exc:  # never raise into the app unless asked
                last = InvalidRequest(f"{type(exc).__name__}: {exc}")
                break
        assert last is not None
        if self.raise_errors:
            raise last
        key = f"{type(last).__name__}: {last}"
        if key not in self._warned and len(self._warned) < 100:
            self._warned.add(key)
            _log.warning("otel-feedback: feedback not sent: %s", key)
        return None

    def _send_http(self, record: dict[str, Any]) -> str:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout)
        try:
            resp = self._http.post(self.url + "/v1/feedback", json={"records": [record]})
        except httpx.HTTPError as exc:
            raise _Retry(StoreUnavailable(f"cannot reach {self.url}: {exc}")) from None
        if resp.status_code == 200:
            return str(resp.json()["ids"][0])
        err = _error(resp)
        if resp.status_code in (429, 502, 503, 504):
            after = resp.headers.get("retry-after")
            raise _Retry(err, float(after) if after and after.isdigit() else None)
        raise InvalidRequest(str(err))

    def _send_grpc(self, record: dict[str, Any]) -> str:
        import grpc

        from ._pb import feedback_pb2

        if self._channel is None:
            self._channel = grpc.insecure_channel(self.grpc_target)
        request = _proto_from_record(record, feedback_pb2)
        call = self._channel.unary_unary(
            "/otel_feedback.v1.FeedbackService/Patch",
            request_serializer=feedback_pb2.PatchRequest.SerializeToString,
            response_deserializer=feedback_pb2.PatchResponse.FromString,
        )
        try:
            return str(call(request, timeout=self.timeout).id)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                raise _Retry(StoreUnavailable(f"{code.name}: {exc.details()}")) from None
            raise InvalidRequest(f"{code.name}: {exc.details()}") from None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Retry(Exception):
    def __init__(self, error: OtelFeedbackError, after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.after = after


def _proto_from_record(record: dict[str, Any], pb: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes

    req = pb.PatchRequest(id=record.get("id", ""))
    if "target" in record:
        req.target.attribute_key = record["target"]["attribute"]
        req.target.attribute_value = str(record["target"]["value"])
    else:
        from .feedback import check_id

        if record.get("trace_id") is not None:
            req.target.trace_id = bytes.fromhex(check_id(record["trace_id"], 32, "trace_id"))
        if record.get("span_id") is not None:
            req.target.span_id = bytes.fromhex(check_id(record["span_id"], 16, "span_id"))
    if record.get("attributes"):
        req.attributes.extend(_encode_attributes(record["attributes"]))
    for key in ("name", "label", "explanation", "error"):
        if record.get(key) is not None:
            setattr(req, key, str(record[key]))
    if record.get("expected") is not None:
        e = record["expected"]
        req.expected = e if isinstance(e, str) else json.dumps(e)
    if record.get("score") is not None:
        req.score = float(record["score"])
    source = record.get("source") or {}
    if source:
        req.source.kind = {"HUMAN": 1, "LLM": 2, "CODE": 3}.get(str(source.get("kind", "")).upper(), 0)
        req.source.id = str(source.get("id") or "")
    if record.get("metadata"):
        req.metadata.extend(_encode_attributes(record["metadata"]))
    if record.get("timestamp") is not None:
        from .feedback import parse_time

        req.time_unix_nano = parse_time(record["timestamp"], "timestamp")
    return req
