"""The HTTP face (Starlette on uvicorn): OTLP/HTTP, feedback, Phoenix-style annotations, SQL.

Handlers stay thin: read the body (size-limited, gzip-aware, chunked or not), parse, call
:class:`otel_feedback.ingest.Ingest` or the store, serialize. Errors become HTTP statuses in exactly
one function, :func:`http_status`. Our own endpoints answer errors as ``{"ok": false, "error": ...,
"status": N}``; the OTLP endpoints answer a ``google.rpc.Status`` in the request's encoding, as the
OTLP/HTTP specification asks.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import feedback as fb
from ._version import __version__
from .errors import (
    InvalidRequest,
    NotFound,
    OtelFeedbackError,
    PayloadTooLarge,
    QueryError,
    QueryRejected,
    QueryTimeout,
)
from .ingest import Ingest

_log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
RETRY_AFTER_SECONDS = 1


# -- errors ------------------------------------------------------------------------------------------


def http_status(exc: BaseException) -> int:
    """The one place an error becomes an HTTP status."""
    if isinstance(exc, OtelFeedbackError) and exc.retryable:
        return 503
    if isinstance(exc, PayloadTooLarge):
        return 413
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InvalidRequest | QueryRejected | QueryError | QueryTimeout | ValueError):
        return 400
    return 500


class _Unsupported(InvalidRequest):
    """The request's content type is not one this endpoint takes (415)."""


def _status_of(exc: BaseException) -> int:
    return 415 if isinstance(exc, _Unsupported) else http_status(exc)


def error_response(exc: BaseException) -> Response:
    """Our JSON error body; the HTTP status and the body's ``status`` always agree."""
    status = _status_of(exc)
    message = str(exc) if isinstance(exc, OtelFeedbackError | ValueError) else f"internal error: {type(exc).__name__}"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return Response(orjson.dumps({"ok": False, "error": message, "status": status}), status, headers, media_type=JSON)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type=JSON)


# -- bodies ------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, chunked or not, gunzipped if ``Content-Encoding: gzip``; at most ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit} (OTEL_FEEDBACK_MAX_BODY_BYTES)")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes (OTEL_FEEDBACK_MAX_BODY_BYTES)")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise _Unsupported(f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    d = zlib.decompressobj(wbits=47 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"the body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body is over the limit of {limit} bytes (OTEL_FEEDBACK_MAX_BODY_BYTES)")
    return out


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None


# -- OTLP/JSON ---------------------------------------------------------------------------------------

_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_to_b64(obj: dict[str, Any], where: str) -> None:
    for key in _ID_KEYS:
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidRequest(f"{where}.{key}: must be a hex string")
        try:
            obj[key] = base64.b64encode(bytes.fromhex(value)).decode()
        except ValueError:
            raise InvalidRequest(f"{where}.{key}: {value[:40]!r} is not hex (OTLP/JSON ids are hex)") from None


def _otlp_json(raw: bytes, message: Message, kind: str) -> Message:
    """OTLP/JSON -> protobuf. Ids are hex in OTLP/JSON; protobuf's JSON parser would read them as base64."""
    doc = parse_json(raw)
    if not isinstance(doc, dict):
        raise InvalidRequest("the body must be a JSON object")
    outer, inner, items = (
        ("resourceSpans", "scopeSpans", "spans") if kind == "traces" else ("resourceLogs", "scopeLogs", "logRecords")
    )
    for r_i, res in enumerate(_items(doc, outer)):
        for s_i, scope in enumerate(_items(res, inner)):
            for i, item in enumerate(_items(scope, items)):
                where = f"{outer}[{r_i}].{inner}[{s_i}].{items}[{i}]"
                _hex_to_b64(item, where)
                for l_i, link in enumerate(_items(item, "links")):
                    _hex_to_b64(link, f"{where}.links[{l_i}]")
    try:
        return json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidRequest(f"the body is not a valid OTLP/JSON {kind} request: {exc}") from None


def _items(obj: Any, key: str) -> list[Any]:
    if not isinstance(obj, dict):
        return []
    value = obj.get(key)
    if value is None:
        value = obj.get(_snake(key))
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


# -- the app -----------------------------------------------------------------------------------------


class Api:
    """Holds what handlers need; :meth:`app` builds the Starlette application."""

    def __init__(self, ingest: Ingest, *, query: Callable[..., Any] | None = None) -> None:
        self.ingest = ingest
        self.settings = ingest.settings
        self.query_handler = query

    # OTLP ------------------------------------------------------------------------------------------

    async def _otlp(self, request: Request, kind: str) -> Response:
        media = _media_type(request)
        is_json = media == JSON
        try:
            if media not in (PROTOBUF, JSON):
                raise _Unsupported(f"Content-Type {media or '(none)'!r} is not supported; use {PROTOBUF} or {JSON}")
            raw = await read_body(request, self.settings.max_body_bytes)
            req_cls = ExportTraceServiceRequest if kind == "traces" else ExportLogsServiceRequest

            def parse(raw: bytes) -> Any:
                try:
                    return req_cls.FromString(raw)
                except DecodeError as exc:
                    raise InvalidRequest(f"the body is not a valid OTLP protobuf {kind} request: {exc}") from None

            if kind == "traces":
                if is_json:
                    outcome = await run_in_threadpool(self.ingest.traces, _otlp_json(raw, req_cls(), kind))
                else:  # the bytes go to the compiled decoder when it can take them
                    outcome = await run_in_threadpool(self.ingest.traces_bytes, raw, parse)
                response: Message = ExportTraceServiceResponse()
                if outcome.rejected or outcome.message:
                    response = ExportTraceServiceResponse(
                        partial_success=ExportTracePartialSuccess(
                            rejected_spans=outcome.rejected, error_message=outcome.message
                        )
                    )
            else:
                message = _otlp_json(raw, req_cls(), kind) if is_json else parse(raw)
                if not message.resource_logs:
                    return _otlp_response(ExportLogsServiceResponse(), is_json)
                outcome = await run_in_threadpool(self.ingest.logs, message)
                response = ExportLogsServiceResponse()
                if outcome.rejected or outcome.message:
                    response = ExportLogsServiceResponse(
                        partial_success=ExportLogsPartialSuccess(
                            rejected_log_records=outcome.rejected, error_message=outcome.message
                        )
                    )
            return _otlp_response(response, is_json)
        except Exception as exc:
            return _otlp_error(exc, is_json)

    async def traces(self, request: Request) -> Response:
        return await self._otlp(request, "traces")

    async def logs(self, request: Request) -> Response:
        return await self._otlp(request, "logs")

    # feedback --------------------------------------------------------------------------------------

    async def _json_body(self, request: Request, allowed: tuple[str, ...] = (JSON,)) -> Any:
        media = _media_type(request)
        if media not in allowed:
            raise _Unsupported(f"Content-Type {media or '(none)'!r} is not supported; use {' or '.join(allowed)}")
        return parse_json(await read_body(request, self.settings.max_body_bytes))

    async def patch(self, request: Request) -> Response:
        try:
            body = await self._json_body(request, (JSON, "application/merge-patch+json"))
            p = request.path_params
            row = self.ingest.parse_record(body, channel="http_patch", trace_id=p["trace_id"], span_id=p.get("span_id"))
            await run_in_threadpool(self.ingest.feedback, [row])
            return json_response({"ok": True, "id": row.feedback_id, "trace_id": row.trace_id, "span_id": row.span_id})
        except Exception as exc:
            return _api_error(exc)

    async def feedback_batch(self, request: Request) -> Response:
        try:
            rows = self.ingest.parse_batch(await self._json_body(request), channel="http_batch")
            await run_in_threadpool(self.ingest.feedback, rows)
            return json_response({"ok": True, "count": len(rows), "ids": [r.feedback_id for r in rows]})
        except Exception as exc:
            return _api_error(exc)

    async def phoenix(self, request: Request) -> Response:
        level = "span" if request.url.path.endswith("span_annotations") else "trace"
        try:
            rows = self.ingest.parse_phoenix(await self._json_body(request), level)
            await run_in_threadpool(self.ingest.feedback, rows)
            # Phoenix answers {"data": [{"id": ...}]} (with ?sync=true; empty-ish otherwise); ids are ours.
            return json_response({"data": [{"id": r.feedback_id} for r in rows]})
        except Exception as exc:
            return _api_error(exc)

    async def phoenix_note(self, request: Request) -> Response:
        """Phoenix's ``POST /v1/span_notes`` (and ``/v1/trace_notes``): ``{"data": {"span_id"|"trace_id", "note",
        "identifier"?}}`` -> ``{"data": {"id": ...}}``. As in Phoenix, a note is an annotation named ``note``
        by a HUMAN with the text as its explanation, and notes accumulate (each is a new record); the latest
        note per ``identifier`` is current. Unlike Phoenix, a note for a span not yet stored is kept."""
        level = "span" if request.url.path.endswith("span_notes") else "trace"
        target = f"{level}_id"
        try:
            body = await self._json_body(request)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, dict) or set(body) != {"data"}:
                raise InvalidRequest(f'body: expected {{"data": {{"{target}": ..., "note": ...}}}}')
            unknown = sorted(set(data) - {target, "note", "identifier"})
            if unknown:
                raise InvalidRequest(f"data: unknown field {unknown[0]!r}; allowed: identifier, note, {target}")
            if data.get(target) is None:
                raise InvalidRequest(f"data.{target}: required")
            note, identifier = data.get("note"), data.get("identifier")
            if not isinstance(note, str) or not note.strip():
                raise InvalidRequest("data.note: must be a non-empty string")
            if identifier is not None and not isinstance(identifier, str):
                raise InvalidRequest("data.identifier: must be a string")
            record = {target: data[target], "name": "note", "explanation": note, "source": {"kind": "HUMAN"}}
            if identifier:  # as for annotations: the latest note per identifier is current
                record["source"]["id"] = identifier
            row = self.ingest.parse_record(record, channel=f"phoenix_{level}_note", where="data")
            await run_in_threadpool(self.ingest.feedback, [row])
            return json_response({"data": {"id": row.feedback_id}})
        except Exception as exc:
            return _api_error(exc)

    async def get_configs(self, request: Request) -> Response:
        config = self.ingest.config
        decls = sorted(config.declarations.values(), key=lambda d: d.name)
        return json_response({"feedback": [d.to_json() for d in decls], "strict": config.strict})

    async def post_configs(self, request: Request) -> Response:
        try:
            decls = fb.parse_declarations(await self._json_body(request))
            await run_in_threadpool(self.ingest.declare, decls)
            return json_response({"ok": True, "declared": [d.name for d in decls]})
        except Exception as exc:
            return _api_error(exc)

    # misc ------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return json_response({"ok": True, "status": "serving", "version": __version__})

    async def query(self, request: Request) -> Response:
        if self.query_handler is None:
            return _api_error(NotFound("this server does not answer queries"))
        try:
            return await self.query_handler(request)
        except Exception as exc:
            return _api_error(exc)

    def app(self) -> Starlette:
        s = self.settings
        middleware = []
        if s.cors_origins:
            middleware.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=list(s.cors_origins),
                    allow_methods=["GET", "POST", "PATCH", "OPTIONS"],
                    allow_headers=["*"],
                    max_age=600,
                )
            )
        routes = [
            Route("/v1/traces", self.traces, methods=["POST"]),
            Route("/v1/logs", self.logs, methods=["POST"]),
            Route("/v1/traces/{trace_id}", self.patch, methods=["PATCH"]),
            Route("/v1/traces/{trace_id}/spans/{span_id}", self.patch, methods=["PATCH"]),
            Route("/v1/feedback", self.feedback_batch, methods=["POST"]),
            Route("/v1/span_annotations", self.phoenix, methods=["POST"]),
            Route("/v1/trace_annotations", self.phoenix, methods=["POST"]),
            Route("/v1/span_notes", self.phoenix_note, methods=["POST"]),
            Route("/v1/trace_notes", self.phoenix_note, methods=["POST"]),
            Route("/v1/query", self.query, methods=["POST", "GET"]),
            Route("/v1/feedback_configs", self.get_configs, methods=["GET"]),
            Route("/v1/feedback_configs", self.post_configs, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
        ]

        async def not_found(request: Request, exc: Exception) -> Response:
            status = getattr(exc, "status_code", 404)
            message = f"no route {request.method} {request.url.path}" if status == 404 else str(exc)
            return Response(orjson.dumps({"ok": False, "error": message, "status": status}), status, media_type=JSON)

        async def server_error(request: Request, exc: Exception) -> Response:
            _log.exception("otel-feedback: unexpected error in %s %s", request.method, request.url.path)
            return _api_error(exc)

        return Starlette(
            routes=routes,
            middleware=middleware,
            exception_handlers={404: not_found, 405: not_found, 500: server_error},
        )


def _api_error(exc: BaseException) -> Response:
    if not isinstance(exc, OtelFeedbackError | ValueError):
        _log.exception("otel-feedback: unexpected error", exc_info=exc)
    return error_response(exc)


def _otlp_response(message: Message, is_json: bool) -> Response:
    if is_json:
        return Response(json_format.MessageToJson(message, indent=None), 200, media_type=JSON)
    return Response(message.SerializeToString(), 200, media_type=PROTOBUF)


def _otlp_error(exc: BaseException, is_json: bool) -> Response:
    if not isinstance(exc, OtelFeedbackError | ValueError):
        _log.exception("otel-feedback: unexpected error in an OTLP/HTTP handler", exc_info=exc)
    status = _status_of(exc)
    message = str(exc) if isinstance(exc, OtelFeedbackError | ValueError) else f"internal error: {type(exc).__name__}"
    grpc_code = {400: 3, 413: 8, 415: 3, 503: 14}.get(status, 13)
    body = status_pb2.Status(code=grpc_code, message=message)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    if is_json:
        return Response(json_format.MessageToJson(body, indent=None), status, headers, media_type=JSON)
    return Response(body.SerializeToString(), status, headers, media_type=PROTOBUF)


__all__ = ["Api", "error_response", "http_status", "read_body"]
