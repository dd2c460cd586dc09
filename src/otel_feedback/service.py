"""gRPC ``otel_feedback.v1.FeedbackService`` (``proto/otel_feedback/v1/feedback.proto``): ``Patch`` and
``BatchPatch``, served on the OTLP gRPC port. Requests are turned into the same JSON-shaped records the
HTTP API takes, so both faces share one set of validation rules (:mod:`otel_feedback.feedback`)."""

from __future__ import annotations

from typing import Any

import grpc

from ._pb import feedback_pb2
from .decode import key_values
from .errors import InvalidRequest
from .ingest import Ingest
from .receiver import _unary

SERVICE = "otel_feedback.v1.FeedbackService"
_KINDS = {0: None, 1: "HUMAN", 2: "LLM", 3: "CODE"}


def record_from_proto(p: Any, where: str = "request") -> dict[str, Any]:
    """A ``PatchRequest`` as the JSON-shaped record :func:`otel_feedback.feedback.parse_record` checks."""
    record: dict[str, Any] = {}
    t = p.target
    if t.attribute_key or t.attribute_value:
        record["target"] = {"attribute": t.attribute_key, "value": t.attribute_value}
    else:
        for field, size in (("trace_id", 16), ("span_id", 8)):
            raw = getattr(t, field)
            if raw:
                if len(raw) != size:
                    raise InvalidRequest(f"{where}.target.{field}: must be {size} bytes, got {len(raw)}")
                record[field] = raw.hex()
    if p.id:
        record["id"] = p.id
    if len(p.attributes):
        record["attributes"] = key_values(p.attributes)
    for field in ("name", "label", "explanation", "expected", "error"):
        value = getattr(p, field)
        if value:
            record[field] = value
    if p.HasField("score"):
        record["score"] = p.score
    if p.HasField("source"):
        source = {"kind": _KINDS.get(p.source.kind), "id": p.source.id or None}
        record["source"] = {k: v for k, v in source.items() if v is not None}
    if p.time_unix_nano:
        record["timestamp"] = p.time_unix_nano
    if len(p.metadata):
        record["metadata"] = key_values(p.metadata)
    return record


def feedback_handlers(ingest: Ingest) -> list[grpc.GenericRpcHandler]:
    def patch(raw: bytes, context: grpc.ServicerContext) -> Any:
        request = feedback_pb2.PatchRequest.FromString(raw)
        row = ingest.parse_record(record_from_proto(request), channel="grpc", where="request")
        ingest.feedback([row])
        return feedback_pb2.PatchResponse(id=row.feedback_id)

    def batch_patch(raw: bytes, context: grpc.ServicerContext) -> Any:
        request = feedback_pb2.BatchPatchRequest.FromString(raw)
        rows = [
            ingest.parse_record(record_from_proto(p, f"patches[{i}]"), channel="grpc", where=f"patches[{i}]")
            for i, p in enumerate(request.patches)
        ]
        ingest.feedback(rows)
        return feedback_pb2.BatchPatchResponse(ids=[r.feedback_id for r in rows])

    return [grpc.method_handlers_generic_handler(SERVICE, {"Patch": _unary(patch), "BatchPatch": _unary(batch_patch)})]
