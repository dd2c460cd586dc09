"""OTLP receivers driven by the real Python SDK exporters and by hand-made bad requests."""

from __future__ import annotations

import gzip
import json
import socket

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from otel_feedback.server import PortInUse

from .conftest import make_server, sql

TRACE_ID = "5b8efff798038103d269b633813fc60c"


def _send_sdk_spans(exporter, service: str) -> dict[str, str]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests", "1.2.3")
    with tracer.start_as_current_span("chat", attributes={"s": "x", "i": 7, "d": 0.5, "b": True, "a": [1, 2]}) as root:
        root.add_event("thinking", {"step": 1})
        with tracer.start_as_current_span("llm") as child:
            child.set_status(Status(StatusCode.ERROR, "boom"))
    ids = {
        "trace": format(root.get_span_context().trace_id, "032x"),
        "root": format(root.get_span_context().span_id, "016x"),
    }
    provider.shutdown()
    return ids


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_traces_round_trip(server, transport):
    exporter = (
        GrpcSpanExporter(endpoint=server.grpc_target, insecure=True)
        if transport == "grpc"
        else HttpSpanExporter(endpoint=server.http_url + "/v1/traces")
    )
    ids = _send_sdk_spans(exporter, f"svc-{transport}")
    rows = sql(server, "SELECT * FROM span_log ORDER BY start_time")
    assert [r["name"] for r in rows] == ["chat", "llm"]
    chat, llm = rows
    assert chat["trace_id"] == ids["trace"] and chat["span_id"] == ids["root"] and chat["parent_span_id"] is None
    assert llm["parent_span_id"] == ids["root"]
    assert (
        chat["service_name"] == f"svc-{transport}"
        and chat["scope_name"] == "tests"
        and chat["scope_version"] == "1.2.3"
    )
    assert json.loads(chat["attributes"]) == {"s": "x", "i": 7, "d": 0.5, "b": True, "a": [1, 2]}
    assert json.loads(chat["events"])[0]["name"] == "thinking"
    assert llm["status_code"] == "ERROR" and llm["status_message"] == "boom"
    assert chat["kind"] == "INTERNAL"


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_log_events_become_feedback(server, transport):
    span_ids = _send_sdk_spans(GrpcSpanExporter(endpoint=server.grpc_target, insecure=True), "svc")
    exporter = (
        GrpcLogExporter(endpoint=server.grpc_target, insecure=True)
        if transport == "grpc"
        else HttpLogExporter(endpoint=server.http_url + "/v1/logs")
    )
    provider = LoggerProvider(resource=Resource.create({"service.name": "web"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    ctx = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(int(span_ids["trace"], 16), int(span_ids["root"], 16), False, TraceFlags(1)))
    )
    logger = provider.get_logger("feedback")
    logger.emit(
        context=ctx,
        event_name="user_feedback",
        attributes={"user_feedback": "negative", "user_feedback_rating": 2, "user_feedback_comment": "wrong"},
    )
    logger.emit(body="plain log line")
    provider.shutdown()
    logs = sql(server, "SELECT event_name, body, trace_id FROM log_records ORDER BY event_name NULLS LAST")
    assert [r["event_name"] for r in logs] == ["user_feedback", None]
    assert json.loads(logs[1]["body"]) == "plain log line"
    [span] = sql(server, "SELECT * FROM spans WHERE span_id = $s", {"s": span_ids["root"]})
    assert span["user_feedback"] == "negative"
    assert span["user_feedback_rating"] == 2
    assert span["user_feedback_comment"] == "wrong"
    [fb] = sql(server, "SELECT channel, annotator_kind FROM feedback")
    assert fb == {"channel": "otlp_log", "annotator_kind": "HUMAN"}


def _request(
    trace_id: bytes = bytes.fromhex(TRACE_ID), span_id: bytes = b"\x01" * 8, **attrs
) -> ExportTraceServiceRequest:
    span = Span(trace_id=trace_id, span_id=span_id, name="s", start_time_unix_nano=1, end_time_unix_nano=2_000_001)
    for k, v in attrs.items():
        span.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])


def _post(http, body: bytes, content_type: str = "application/x-protobuf", **headers) -> httpx.Response:
    return http.post("/v1/traces", content=body, headers={"content-type": content_type, **headers})


def test_http_json_ids_are_hex_and_ints_may_be_strings(server, http):
    doc = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "curl"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE_ID,
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "aaa19b7ec3c1b174",
                                "name": "json-span",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": 1544712661000000000,
                                "attributes": [
                                    {"key": "n", "value": {"intValue": "7"}},
                                    {"key": "m", "value": {"intValue": 8}},
                                ],
                                "links": [{"traceId": TRACE_ID, "spanId": "bbb19b7ec3c1b174"}],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    r = http.post("/v1/traces", json=doc)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    [row] = sql(server, "SELECT *, epoch_ns(start_time) AS s_ns FROM span_log")
    assert row["trace_id"] == TRACE_ID and row["span_id"] == "eee19b7ec3c1b174"
    assert row["parent_span_id"] == "aaa19b7ec3c1b174" and row["kind"] == "SERVER"
    assert row["s_ns"] == 1544712660000000000
    assert json.loads(row["attributes"]) == {"n": 7, "m": 8}
    assert json.loads(row["links"])[0]["span_id"] == "bbb19b7ec3c1b174"


def test_http_gzip_and_chunked_protobuf(server, http):
    body = gzip.compress(_request().SerializeToString())

    def chunks():
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    r = http.post(
        "/v1/traces", content=chunks(), headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"}
    )
    assert r.status_code == 200, r.text
    assert ExportTraceServiceResponse.FromString(r.content) == ExportTraceServiceResponse()
    assert sql(server, "SELECT count(*) AS n FROM span_log") == [{"n": 1}]


def test_partial_success_for_bad_ids(server):
    req = _request()
    req.resource_spans[0].scope_spans[0].spans.append(Span(trace_id=b"\x01" * 5, span_id=b"\x02" * 8, name="short"))
    req.resource_spans[0].scope_spans[0].spans.append(Span(trace_id=b"\x01" * 16, span_id=b"\x00" * 8, name="zero"))
    with grpc.insecure_channel(server.grpc_target) as ch:
        export = ch.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=ExportTraceServiceRequest.SerializeToString,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        resp = export(req, timeout=10)
    assert resp.partial_success.rejected_spans == 2
    assert "'short': invalid trace_id (5 bytes" in resp.partial_success.error_message
    assert "'zero': invalid span_id" in resp.partial_success.error_message
    assert sql(server, "SELECT name FROM span_log") == [{"name": "s"}]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        (b"\xff\xfe garbage \x00\x01", "application/x-protobuf", 400, "not a valid OTLP protobuf traces request"),
        (_request().SerializeToString()[:-5], "application/x-protobuf", 400, "not a valid OTLP protobuf"),
        (b"{not json", "application/json", 400, "not valid JSON"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
            "application/json",
            400,
            "is not hex",
        ),
        (b'{"resourceSpans": 5}', "application/json", 400, "not a valid OTLP/JSON"),
        (b"hello", "text/plain", 415, "Content-Type 'text/plain' is not supported"),
    ],
)
def test_bad_http_bodies_get_documented_errors(server, http, body, content_type, status, needle):
    r = _post(http, body, content_type)
    assert r.status_code == status, r.text
    if content_type == "application/json":
        message = r.json()["message"]
    else:
        message = status_pb2.Status.FromString(r.content).message
    assert needle in message
    # the server keeps serving
    assert _post(http, _request().SerializeToString()).status_code == 200


def test_oversized_and_bad_gzip_bodies(db_path):
    srv = make_server(db_path, max_body_bytes=10_000)
    try:
        with httpx.Client(base_url=srv.http_url) as http:
            r = _post(http, b"x" * 20_000)
            assert (
                r.status_code == 413
                and "OTEL_FEEDBACK_MAX_BODY_BYTES" in status_pb2.Status.FromString(r.content).message
            )
            bomb = gzip.compress(b"\x00" * 1_000_000)
            r = _post(http, bomb, **{"content-encoding": "gzip"})
            assert r.status_code == 413
            r = _post(http, b"not gzip at all", **{"content-encoding": "gzip"})
            assert r.status_code == 400 and "not valid gzip" in status_pb2.Status.FromString(r.content).message
            with grpc.insecure_channel(srv.grpc_target) as ch:
                export = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
                with pytest.raises(grpc.RpcError) as info:
                    export(b"\x0a" + b"\x00" * 20_000, timeout=10)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        srv.stop()


def test_grpc_garbage_is_invalid_argument(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        export = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as info:
            export(b"\xff\xff\xff garbage", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ExportTraceServiceRequest" in info.value.details()


def test_ten_megabyte_attribute_is_truncated_and_reported(server, http):
    r = _post(http, _request(big="x" * 10_000_000).SerializeToString())
    assert r.status_code == 200
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 0
    assert "truncated" in resp.partial_success.error_message
    assert "OTEL_FEEDBACK_MAX_ATTRIBUTE_BYTES" in resp.partial_success.error_message
    [row] = sql(server, "SELECT length(attributes->>'big') AS n FROM span_log")
    assert row["n"] == 1024 * 1024


def test_empty_request_is_success(server, http):
    assert _post(http, b"").status_code == 200
    assert http.post("/v1/traces", json={}).status_code == 200
    assert sql(server, "SELECT count(*) AS n FROM span_log") == [{"n": 0}]


def test_grpc_health_service(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        resp = stub.Check(health_pb2.HealthCheckRequest(service="opentelemetry.proto.collector.trace.v1.TraceService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_port_in_use_is_one_clear_error(db_path, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"cannot listen on 127.0.0.1:{port} .*--http-port"):
            make_server(db_path, http_port=port)
        with pytest.raises(PortInUse, match=r"--grpc-port"):
            make_server(tmp_path / "other.duckdb", grpc_port=port)


def test_unknown_route_and_method_use_the_json_error_shape(http):
    r = http.get("/nope")
    assert r.status_code == 404 and r.json() == {"ok": False, "error": "no route GET /nope", "status": 404}
    r = http.get("/v1/traces")
    assert r.status_code == 405 and r.json()["status"] == 405


def test_json_partial_success_answers_in_json(server, http):
    doc = json_format.MessageToDict(_request(trace_id=b"\x01" * 3))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "010101"
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "0101010101010101"
    r = http.post("/v1/traces", json=doc)
    assert r.status_code == 200
    assert r.json()["partialSuccess"]["rejectedSpans"] == "1"
