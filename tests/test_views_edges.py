"""The edges of the ``spans`` and ``traces`` views that the fixed dataset of test_views.py does not reach:
a span stored twice (a client retried an export whose answer it lost), feedback on child spans only, a
root's own feedback against a child's newer one, patches that remove keys, and lookups of one trace.

Spans go in over OTLP/HTTP protobuf as a client sends them, feedback through PATCH; answers come from SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otel_feedback.server import Server

from .conftest import make_server, sql

T1 = "0af7651916cd43dd8448eb211c80319c"  # stored twice, one failed child
T2 = "1af7651916cd43dd8448eb211c80319c"  # feedback on a child only
T3 = "2af7651916cd43dd8448eb211c80319c"  # root and child both have feedback
BASE_NS = 1_780_000_000_000_000_000


def span(
    trace_id: str,
    span_id: str,
    parent: str | None,
    name: str,
    offset_ms: int,
    *,
    error: bool = False,
    attrs: dict[str, str] | None = None,
) -> Span:
    s = Span(
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(span_id),
        name=name,
        start_time_unix_nano=BASE_NS + offset_ms * 1_000_000,
        end_time_unix_nano=BASE_NS + (offset_ms + 10) * 1_000_000,
    )
    if parent:
        s.parent_span_id = bytes.fromhex(parent)
    if error:
        s.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="tool failed"))
    for k, v in (attrs or {}).items():
        s.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    return s


def request(*spans: Span) -> bytes:
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="edge-bot"))])
    rs = ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=list(spans))])
    return ExportTraceServiceRequest(resource_spans=[rs]).SerializeToString()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(Path(tmp_path_factory.mktemp("edges")) / "edges.duckdb")
    try:
        with httpx.Client(base_url=srv.http_url, timeout=30) as http:
            post = {"headers": {"content-type": "application/x-protobuf"}}
            t1 = request(
                span(T1, "00000000000000a1", None, "chat", 0, attrs={"input.value": "hi", "output.value": "hello"}),
                span(
                    T1,
                    "00000000000000a2",
                    "00000000000000a1",
                    "tool",
                    1,
                    error=True,
                    attrs={"annotation_status": "empty"},
                ),
            )
            # the same export twice: the client did not get the first answer and retried
            assert http.post("/v1/traces", content=t1, **post).status_code == 200
            assert http.post("/v1/traces", content=t1, **post).status_code == 200
            assert (
                http.post(
                    "/v1/traces",
                    content=request(
                        span(T2, "00000000000000b1", None, "chat", 100),
                        span(T2, "00000000000000b2", "00000000000000b1", "llm", 101),
                        span(T3, "00000000000000c1", None, "chat", 200, attrs={"topic": "refunds"}),
                        span(T3, "00000000000000c2", "00000000000000c1", "llm", 201),
                    ),
                    **post,
                ).status_code
                == 200
            )

            def patch(path: str, attributes: dict, given: str) -> None:
                body = {"attributes": {**attributes, "user_feedback_timestamp": given}}
                r = http.patch(path, content=orjson.dumps(body), headers={"content-type": "application/json"})
                assert r.status_code in (200, 202), r.text

            # T2: only the llm child hears from the user
            patch(
                f"/v1/traces/{T2}/spans/00000000000000b2",
                {"user_feedback": "negative", "user_feedback_comment": "made it up"},
                "2026-11-23T10:00:00Z",
            )
            # T3: the root says positive/5 first; a child gets a newer negative; the root's own value wins
            patch(
                f"/v1/traces/{T3}",
                {"user_feedback": "positive", "user_feedback_rating": 5, "topic": None},
                "2026-11-23T10:00:00Z",
            )
            patch(f"/v1/traces/{T3}/spans/00000000000000c2", {"user_feedback": "negative"}, "2026-11-23T11:00:00Z")
        yield srv
    finally:
        srv.stop()


def test_a_span_stored_twice_counts_once(server: Server) -> None:
    assert sql(server, "SELECT count(*) AS n FROM span_log WHERE trace_id = $t", {"t": T1}) == [{"n": 4}]
    rows = sql(server, "SELECT span_id FROM spans WHERE trace_id = $t ORDER BY span_id", {"t": T1})
    assert [r["span_id"] for r in rows] == ["00000000000000a1", "00000000000000a2"]
    (t,) = sql(server, "SELECT * FROM traces WHERE trace_id = $t", {"t": T1})
    assert (t["span_count"], t["error_count"], t["status_code"]) == (2, 1, "ERROR")
    assert (t["root_span_id"], t["root_name"], t["service_name"]) == ("00000000000000a1", "chat", "edge-bot")
    assert (t["input"], t["output"], t["feedback_count"], t["user_feedback"]) == ("hi", "hello", 0, None)
    assert t["duration_ms"] == 11.0


def test_feedback_on_a_child_only_is_the_traces_feedback(server: Server) -> None:
    (child,) = sql(
        server, "SELECT * FROM spans WHERE trace_id = $t AND span_id = $s", {"t": T2, "s": "00000000000000b2"}
    )
    assert (child["user_feedback"], child["user_feedback_comment"], child["feedback_count"]) == (
        "negative",
        "made it up",
        1,
    )
    (root,) = sql(server, "SELECT * FROM spans WHERE trace_id = $t AND parent_span_id IS NULL", {"t": T2})
    assert (root["user_feedback"], root["feedback_count"]) == (None, 0)
    (t,) = sql(server, "SELECT * FROM traces WHERE trace_id = $t", {"t": T2})
    assert (t["user_feedback"], t["user_feedback_comment"], t["sentiment"], t["feedback_count"]) == (
        "negative",
        "made it up",
        "negative",
        1,
    )
    assert t["user_feedback_timestamp"] is None  # the root itself has no feedback
    assert [r["trace_id"] for r in sql(server, "SELECT trace_id FROM worst_traces")].count(T2) == 1


def test_the_roots_own_feedback_wins_over_a_childs_newer_one(server: Server) -> None:
    (t,) = sql(server, "SELECT * FROM traces WHERE trace_id = $t", {"t": T3})
    assert (t["user_feedback"], t["user_feedback_rating"], t["sentiment"], t["feedback_count"]) == (
        "positive",
        5.0,
        "positive",
        2,
    )
    assert str(t["user_feedback_timestamp"]) == "2026-11-23 10:00:00"
    # root_attributes: the root's own attributes with its patch merged (``topic`` removed by a null)
    attrs = orjson.loads(t["root_attributes"])
    assert attrs["user_feedback"] == "positive" and attrs["user_feedback_rating"] == 5 and "topic" not in attrs
    (root,) = sql(
        server,
        "SELECT attributes, span_attributes FROM spans WHERE trace_id = $t AND span_id = $s",
        {"t": T3, "s": "00000000000000c1"},
    )
    assert "topic" not in orjson.loads(root["attributes"])
    assert orjson.loads(root["span_attributes"]) == {"topic": "refunds"}


def test_views_agree_on_every_trace(server: Server) -> None:
    """Whole-table and one-trace answers are the same rows (the one-trace form reads one trace)."""
    whole = {r["trace_id"]: r for r in sql(server, "SELECT * FROM traces")}
    assert set(whole) == {T1, T2, T3}
    for trace_id, row in whole.items():
        assert sql(server, "SELECT * FROM traces WHERE trace_id = $t", {"t": trace_id}) == [row]
    summary = sql(server, "SELECT traces, traces_with_feedback, positive, negative FROM feedback_summary")
    assert summary == [{"traces": 3, "traces_with_feedback": 2, "positive": 1, "negative": 1}]


def test_review_queue_from_own_attributes_and_patches(server: Server) -> None:
    """A span sent with annotation_status "empty" is in the queue with no feedback on it; a patch that sets
    "filled" takes it out."""
    rows = sql(server, "SELECT trace_id, span_id, name, user_feedback FROM review_queue")
    assert rows == [{"trace_id": T1, "span_id": "00000000000000a2", "name": "tool", "user_feedback": None}]
    (t,) = sql(
        server, "SELECT feedback_count, user_feedback, has_user_feedback FROM traces WHERE trace_id = $t", {"t": T1}
    )
    assert t == {"feedback_count": 0, "user_feedback": None, "has_user_feedback": False}
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        r = http.patch(f"/v1/traces/{T1}/spans/00000000000000a2", json={"attributes": {"annotation_status": "filled"}})
        assert r.status_code in (200, 202), r.text
    assert sql(server, "SELECT * FROM review_queue") == []


def test_worst_traces_reads_the_feedback_once_not_once_per_inlined_view(tmp_path: Path) -> None:
    """Through the views, DuckDB inlined feedback and its targets wherever they were read: 18 scans of
    feedback_log and 33 hash joins, over 183 MB at 2.2 M spans. Computed once each, one scan remains (the feedback view
    looks for earlier copies of a record in feedback_copies, not in the log)."""
    from otel_feedback.store import Store

    with Store(tmp_path / "p.duckdb") as store:
        cur = store.cursor()
        try:
            cur.execute("SET explain_output = 'physical_only'")
            plan = cur.execute("EXPLAIN SELECT * FROM worst_traces").fetchall()[0][1]
        finally:
            cur.close()
    assert plan.count("feedback_log") == 1, plan.count("feedback_log")
    assert plan.count("Hash Join") <= 22
