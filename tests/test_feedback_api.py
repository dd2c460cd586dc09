"""Every way feedback comes in, used by a real client, changes what ``spans`` shows."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import otel_feedback
from otel_feedback._pb import feedback_pb2
from otel_feedback.store import Store

from .conftest import make_server, send_trace, sql


def _trace(server, *, session: str | None = None, request_id: str | None = None, name: str = "chat") -> dict[str, str]:
    """A root span with one child, sent with the real SDK over gRPC; their hex ids."""
    attrs = {"input.value": "where is my order?", "output.value": "it shipped"}
    if session:
        attrs["session.id"] = session
    if request_id:
        attrs["client_request_id"] = request_id
    return send_trace(server, service="support-bot", name=name, attributes=attrs)


def _span(server, span_id: str) -> dict:
    [row] = sql(server, "SELECT * FROM spans WHERE span_id = $s", {"s": span_id})
    return row


def test_patch_trace_applies_to_root_span(server, http):
    ids = _trace(server)
    r = http.patch(
        f"/v1/traces/{ids['trace']}",
        json={
            "attributes": {
                "user_feedback": "negative",
                "user_feedback_rating": 2,
                "user_feedback_category": "incorrect",
                "user_feedback_comment": "the order never came",
                "user_feedback_timestamp": "2026-11-23T10:00:00Z",
            },
            "id": "fb-1",
            "source": {"kind": "HUMAN", "id": "user_456"},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "id": "fb-1", "trace_id": ids["trace"], "span_id": None}
    root = _span(server, ids["root"])
    assert root["user_feedback"] == "negative"
    assert root["user_feedback_rating"] == 2
    assert root["user_feedback_category"] == "incorrect"
    assert root["user_feedback_comment"] == "the order never came"
    assert root["user_feedback_timestamp"].isoformat() == "2026-11-23T10:00:00"
    assert json.loads(root["attributes"])["input.value"] == "where is my order?"
    assert _span(server, ids["child"])["user_feedback"] is None
    [t] = sql(server, "SELECT * FROM traces")
    assert t["user_feedback"] == "negative" and t["input"] == "where is my order?" and t["span_count"] == 2
    [fb] = sql(server, "SELECT annotator_kind, source_id, channel FROM feedback")
    assert fb == {"annotator_kind": "HUMAN", "source_id": "user_456", "channel": "http_patch"}


def test_patch_span_merge_patch_null_removes_and_retry_is_idempotent(server, http):
    ids = _trace(server)
    url = f"/v1/traces/{ids['trace']}/spans/{ids['child']}"
    headers = {"content-type": "application/merge-patch+json"}
    body = {"id": "a", "attributes": {"user_feedback": "thumbs_up", "note": "x"}, "timestamp": "2026-01-01T00:00:00Z"}
    assert http.patch(url, content=json.dumps(body), headers=headers).status_code == 200
    assert http.patch(url, content=json.dumps(body), headers=headers).status_code == 200  # retry: same id
    later = {"id": "b", "attributes": {"note": None}, "timestamp": "2026-01-02T00:00:00Z"}
    assert http.patch(url, json=later).status_code == 200
    child = _span(server, ids["child"])
    assert child["user_feedback"] == "positive"  # normalised thumb
    assert "note" not in json.loads(child["attributes"])
    assert child["feedback_count"] == 2
    assert sql(server, "SELECT count(*) AS n FROM feedback_log") == [{"n": 3}]
    assert sql(server, "SELECT count(*) AS n FROM feedback") == [{"n": 2}]


def test_older_feedback_time_loses_even_if_it_arrives_later(server, http):
    ids = _trace(server)
    url = f"/v1/traces/{ids['trace']}/spans/{ids['root']}"
    http.patch(url, json={"attributes": {"user_feedback_rating": 5}, "timestamp": "2026-01-02T00:00:00Z"})
    http.patch(url, json={"attributes": {"user_feedback_rating": 1}, "timestamp": "2026-01-01T00:00:00Z"})
    assert _span(server, ids["root"])["user_feedback_rating"] == 5


def test_feedback_before_its_span_and_orphans(server, http):
    trace_id, span_id = "ab" * 16, "cd" * 8
    r = http.patch(f"/v1/traces/{trace_id}/spans/{span_id}", json={"attributes": {"user_feedback": "negative"}})
    assert r.status_code == 200
    assert sql(server, "SELECT span_id FROM orphan_feedback") == [{"span_id": span_id}]
    # the span arrives later (a batch exporter held it)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    span = Span(trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id), name="late", end_time_unix_nano=5)
    req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])
    assert (
        http.post(
            "/v1/traces", content=req.SerializeToString(), headers={"content-type": "application/x-protobuf"}
        ).status_code
        == 200
    )
    assert _span(server, span_id)["user_feedback"] == "negative"
    assert sql(server, "SELECT count(*) AS n FROM orphan_feedback") == [{"n": 0}]


def test_batch_with_client_request_id_and_session_targets(server, http):
    a = _trace(server, session="sess-1", request_id="req-a")
    b = _trace(server, session="sess-1", request_id="req-b")
    c = _trace(server, session="sess-2")
    r = http.post(
        "/v1/feedback",
        json={
            "records": [
                {
                    "target": {"attribute": "client_request_id", "value": "req-a"},
                    "attributes": {"user_feedback": "negative"},
                },
                {
                    "target": {"attribute": "session.id", "value": "sess-1"},
                    "name": "session_quality",
                    "label": "poor",
                    "source": {"kind": "HUMAN", "id": "reviewer"},
                },
                {"trace_id": c["trace"], "attributes": {"user_feedback_rating": 4}},
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 3
    assert _span(server, a["root"])["user_feedback"] == "negative"
    assert _span(server, b["root"])["user_feedback"] is None
    assert _span(server, c["root"])["user_feedback_rating"] == 4
    rows = sql(server, "SELECT trace_id FROM annotations WHERE name = 'session_quality' ORDER BY trace_id")
    assert sorted(r["trace_id"] for r in rows) == sorted([a["trace"], b["trace"]])


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/traces/xyz", {"attributes": {"user_feedback": "negative"}}, "trace_id: must be 32 hex digits"),
        ("/v1/traces/" + "ab" * 16 + "/spans/123", {"attributes": {"a": 1}}, "span_id: must be 16 hex digits"),
        (
            "/v1/traces/" + "ab" * 16,
            {"attributes": {"user_feedback_rating": 9}},
            "out of range for 'user_feedback_rating' (1 to 5)",
        ),
        ("/v1/traces/" + "ab" * 16, {"attributes": {"user_feedback": "meh"}}, "is not a thumb"),
        ("/v1/traces/" + "ab" * 16, {"attributes": {"": 1}}, "attribute name: must be a non-empty string"),
        (
            "/v1/traces/" + "ab" * 16,
            {"attributes": {"user_feedback_comment": "x" * 20000}},
            "OTEL_FEEDBACK_MAX_COMMENT_BYTES",
        ),
        ("/v1/traces/" + "ab" * 16, {"attributes": {"a": {"nested": 1}}}, "got dict"),
        ("/v1/traces/" + "ab" * 16, {"atributes": {"a": 1}}, "unknown field 'atributes'"),
        ("/v1/traces/" + "ab" * 16, {"name": "", "label": "x"}, "body.name: must be a non-empty string"),
        ("/v1/traces/" + "ab" * 16, {"label": "x"}, 'add "name"'),
        ("/v1/traces/" + "ab" * 16, {}, "sets nothing"),
        ("/v1/traces/" + "ab" * 16, {"attributes": {"user_feedback_timestamp": "yesterday"}}, "not an ISO 8601 time"),
        ("/v1/traces/" + "ab" * 16, {"name": "q", "explanation": "x" * 1_000_000}, "explanation: 1000000 bytes"),
    ],
)
def test_bad_feedback_is_refused_naming_the_field_and_writes_nothing(server, http, path, body, needle):
    r = http.patch(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["ok"] is False and r.json()["status"] == 400
    assert needle in r.json()["error"]
    assert sql(server, "SELECT count(*) AS n FROM feedback_log") == [{"n": 0}]


def test_batch_with_one_bad_record_writes_nothing(server, http):
    r = http.post(
        "/v1/feedback", json={"records": [{"trace_id": "ab" * 16, "attributes": {"a": 1}}, {"trace_id": "nope"}]}
    )
    assert r.status_code == 400 and "records[1].trace_id" in r.json()["error"]
    assert sql(server, "SELECT count(*) AS n FROM feedback_log") == [{"n": 0}]


def test_wrong_content_type_and_bad_json(http):
    r = http.patch("/v1/traces/" + "ab" * 16, content=b"user_feedback=1", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["status"] == 415
    r = http.patch("/v1/traces/" + "ab" * 16, content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_cors_lets_a_web_page_send_thumbs(db_path):
    srv = make_server(db_path, cors_origins=("https://app.example",))
    try:
        with httpx.Client(base_url=srv.http_url) as http:
            pre = http.options(
                "/v1/traces/" + "ab" * 16,
                headers={
                    "origin": "https://app.example",
                    "access-control-request-method": "PATCH",
                    "access-control-request-headers": "content-type",
                },
            )
            assert pre.status_code == 200
            assert pre.headers["access-control-allow-origin"] == "https://app.example"
            assert "PATCH" in pre.headers["access-control-allow-methods"]
            r = http.patch(
                "/v1/traces/" + "ab" * 16,
                json={"attributes": {"user_feedback": "up"}},
                headers={"origin": "https://app.example"},
            )
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
            other = http.options(
                "/v1/feedback", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
            )
            assert "access-control-allow-origin" not in other.headers
    finally:
        srv.stop()


def test_grpc_feedback_service(server):
    ids = _trace(server)
    with grpc.insecure_channel(server.grpc_target) as ch:
        patch = ch.unary_unary(
            "/otel_feedback.v1.FeedbackService/Patch",
            request_serializer=feedback_pb2.PatchRequest.SerializeToString,
            response_deserializer=feedback_pb2.PatchResponse.FromString,
        )
        batch = ch.unary_unary(
            "/otel_feedback.v1.FeedbackService/BatchPatch",
            request_serializer=feedback_pb2.BatchPatchRequest.SerializeToString,
            response_deserializer=feedback_pb2.BatchPatchResponse.FromString,
        )
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

        req = feedback_pb2.PatchRequest(
            id="g-1",
            target=feedback_pb2.Target(trace_id=bytes.fromhex(ids["trace"])),
            attributes=[
                KeyValue(key="user_feedback", value=AnyValue(string_value="negative")),
                KeyValue(key="user_feedback_rating", value=AnyValue(int_value=1)),
            ],
            source=feedback_pb2.Source(kind=feedback_pb2.ANNOTATOR_KIND_HUMAN, id="u9"),
        )
        assert patch(req, timeout=10).id == "g-1"
        resp = batch(
            feedback_pb2.BatchPatchRequest(
                patches=[
                    feedback_pb2.PatchRequest(
                        target=feedback_pb2.Target(
                            trace_id=bytes.fromhex(ids["trace"]), span_id=bytes.fromhex(ids["child"])
                        ),
                        name="retrieval_relevance",
                        score=0.25,
                        label="irrelevant",
                        source=feedback_pb2.Source(kind=feedback_pb2.ANNOTATOR_KIND_LLM, id="judge-1"),
                    )
                ]
            ),
            timeout=10,
        )
        assert len(resp.ids) == 1
        with pytest.raises(grpc.RpcError) as info:
            patch(feedback_pb2.PatchRequest(target=feedback_pb2.Target(trace_id=b"\x01" * 3)), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "target.trace_id: must be 16 bytes" in info.value.details()
    root = _span(server, ids["root"])
    assert root["user_feedback"] == "negative" and root["user_feedback_rating"] == 1
    [ann] = sql(server, "SELECT span_id, name, score, label, annotator_kind, source_id FROM annotations")
    assert ann == {
        "span_id": ids["child"],
        "name": "retrieval_relevance",
        "score": 0.25,
        "label": "irrelevant",
        "annotator_kind": "LLM",
        "source_id": "judge-1",
    }


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_feedback_client(server, transport):
    ids = _trace(server)
    with otel_feedback.FeedbackClient(server.http_url, transport=transport, grpc_target=server.grpc_target) as client:
        fid = client.send(ids["trace"], user_feedback="negative", rating=2, comment="no", source_id="u1")
        assert fid is not None
        assert client.send(ids["trace"], id=fid, user_feedback="positive") == fid  # same id: no change
        assert client.send("nothex", user_feedback="negative") is None  # never raises by default
    root = _span(server, ids["root"])
    assert (root["user_feedback"], root["user_feedback_rating"], root["user_feedback_comment"]) == ("negative", 2, "no")
    strict = otel_feedback.FeedbackClient(
        server.http_url, transport=transport, grpc_target=server.grpc_target, raise_errors=True
    )
    with pytest.raises(otel_feedback.InvalidRequest, match="32 hex digits"):
        strict.send("nothex", user_feedback="negative")
    strict.close()


def test_feedback_client_retries_then_gives_up_quietly():
    client = otel_feedback.FeedbackClient("http://127.0.0.1:9", retries=1, timeout=1)
    assert client.send("ab" * 16, user_feedback="positive") is None
    client.close()


def test_span_events_and_openinference_carriers_become_feedback(server):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=server.grpc_target, insecure=True)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("answer") as answer:
        answer.add_event("feedback", {"user_feedback": "negative", "user_feedback_category": "off-topic"})
    target = answer.get_span_context()
    # a post-hoc OpenInference annotation carrier: a new span linked to its target
    with tracer.start_as_current_span(
        "annotation",
        links=[trace.Link(target)],
        attributes={
            "annotations.0.annotation.name": "correctness",
            "annotations.0.annotation.label": "incorrect",
            "annotations.0.annotation.score": 0.0,
            "annotations.0.annotation.annotator_kind": "LLM",
            "annotations.0.annotation.explanation": "wrong order id",
        },
    ):
        pass
    provider.shutdown()
    span_id = format(target.span_id, "016x")
    row = _span(server, span_id)
    assert row["user_feedback"] == "negative" and row["user_feedback_category"] == "off-topic"
    [ann] = sql(server, "SELECT span_id, name, label, score, annotator_kind, explanation, channel FROM annotations")
    assert ann == {
        "span_id": span_id,
        "name": "correctness",
        "label": "incorrect",
        "score": 0.0,
        "annotator_kind": "LLM",
        "explanation": "wrong order id",
        "channel": "openinference",
    }


def test_in_process_exporter_and_record_feedback(tmp_path):
    path = tmp_path / "app.duckdb"
    provider = otel_feedback.configure(path, service_name="notebook", set_global=False)
    tracer = provider.get_tracer("nb")
    with tracer.start_as_current_span("answer") as span:
        span.add_event("user_feedback", {"user_feedback": "positive"})
        trace_id = otel_feedback.current_trace_id()
        assert trace_id == format(span.get_span_context().trace_id, "032x")
        fid = otel_feedback.record_feedback(path=path, rating=4, comment="ok")  # the active span
    otel_feedback.record_feedback(trace_id, path=path, name="helpfulness", score=0.9, source_kind="LLM")
    with pytest.raises(otel_feedback.InvalidRequest, match="out of range"):
        otel_feedback.record_feedback(trace_id, path=path, rating=0)
    assert provider.force_flush()
    provider.shutdown()
    from otel_feedback.store import shared_store

    shared_store(path).close()
    with Store(path, read_only=True) as store:
        res = store.query(
            "SELECT user_feedback, user_feedback_rating, user_feedback_comment, feedback_count FROM spans"
        )
        assert res.rows == [("positive", 4.0, "ok", 3)]
        assert store.query("SELECT count(*) FROM feedback WHERE feedback_id = $f", {"f": fid}).rows == [(1,)]
