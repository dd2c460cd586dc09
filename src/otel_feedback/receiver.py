"""OTLP/gRPC: ``TraceService/Export`` and ``LogsService/Export`` (plus the standard health service).

Handlers decode and hand off to :class:`otel_feedback.ingest.Ingest`, nothing more. A success answer
is sent only after the request's rows are committed. Errors map to gRPC codes in exactly one
function, :func:`grpc_status`: retryable ones become ``UNAVAILABLE`` with a ``RetryInfo`` (in both the
standard ``grpc-status-details-bin`` trailer and ``google.rpc.retryinfo-bin``, which the Python SDK
reads), bad input ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
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

from .errors import InvalidRequest, OtelFeedbackError, PayloadTooLarge
from .ingest import Ingest

_log = logging.getLogger(__name__)

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
RETRY_DELAY_SECONDS = 1


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, Any], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def grpc_status(exc: BaseException) -> grpc.Status:
    """The one place an error becomes a gRPC status."""
    if isinstance(exc, OtelFeedbackError) and exc.retryable:
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=RETRY_DELAY_SECONDS))
        detail = any_pb2.Any()
        detail.Pack(retry)
        status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc), details=[detail])
        return _Status(
            grpc.StatusCode.UNAVAILABLE,
            str(exc),
            (
                ("grpc-status-details-bin", status.SerializeToString()),
                ("google.rpc.retryinfo-bin", retry.SerializeToString()),
            ),
        )
    if isinstance(exc, PayloadTooLarge):
        return _Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), ())
    if isinstance(exc, InvalidRequest | ValueError):
        return _Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc), ())
    return _Status(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", ())


def _unary(
    fn: Callable[[bytes, grpc.ServicerContext], Message],
) -> grpc.RpcMethodHandler:
    def handler(raw: bytes, context: grpc.ServicerContext) -> Message:
        try:
            return fn(raw, context)
        except Exception as exc:
            if not isinstance(exc, OtelFeedbackError | DecodeError):
                _log.exception("otel-feedback: unexpected error in a gRPC handler")
            context.abort_with_status(grpc_status(exc))
            raise  # unreachable: abort raises

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=None, response_serializer=lambda m: m.SerializeToString()
    )


def _parse(cls: type[Message], raw: bytes) -> Any:
    try:
        return cls.FromString(raw)
    except DecodeError as exc:
        raise InvalidRequest(f"the request is not a valid {cls.DESCRIPTOR.name} protobuf: {exc}") from None


def otlp_handlers(ingest: Ingest) -> list[grpc.GenericRpcHandler]:
    """gRPC handlers for the OTLP trace and logs services."""

    def parse_traces(raw: bytes) -> ExportTraceServiceRequest:
        return _parse(ExportTraceServiceRequest, raw)

    def export_traces(raw: bytes, context: grpc.ServicerContext) -> Message:
        outcome = ingest.traces_bytes(raw, parse_traces)
        if outcome.rejected or outcome.message:
            return ExportTraceServiceResponse(
                partial_success=ExportTracePartialSuccess(
                    rejected_spans=outcome.rejected, error_message=outcome.message
                )
            )
        return ExportTraceServiceResponse()

    def export_logs(raw: bytes, context: grpc.ServicerContext) -> Message:
        request = _parse(ExportLogsServiceRequest, raw)
        if not request.resource_logs:
            return ExportLogsServiceResponse()
        outcome = ingest.logs(request)
        if outcome.rejected or outcome.message:
            return ExportLogsServiceResponse(
                partial_success=ExportLogsPartialSuccess(
                    rejected_log_records=outcome.rejected, error_message=outcome.message
                )
            )
        return ExportLogsServiceResponse()

    return [
        grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": _unary(export_traces)}),
        grpc.method_handlers_generic_handler(LOGS_SERVICE, {"Export": _unary(export_logs)}),
    ]


def make_server(
    handlers: list[grpc.GenericRpcHandler],
    host: str,
    port: int,
    *,
    max_message_bytes: int,
    workers: int = 16,
    service_names: tuple[str, ...] = (TRACE_SERVICE, LOGS_SERVICE),
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started-but-not-serving gRPC server bound to ``host:port``; returns it, the bound port, and the
    health servicer. Raises ``OSError`` when the port cannot be bound."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otel-feedback-grpc"),
        handlers=handlers,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=workers * 8,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    for name in ("", *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer
