"""The real ``arize-phoenix-client`` (pinned 3.5.0) against otel-feedback, unchanged.

Its ``log_span_annotations`` / ``add_span_annotation`` (POST /v1/span_annotations),
``log_trace_annotations`` (POST /v1/trace_annotations) and ``add_span_note`` (POST /v1/span_notes)
must work as they do against Phoenix, and what they send must show on the spans in SQL.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from .conftest import send_trace, sql

phoenix_client = pytest.importorskip("phoenix.client")


@pytest.fixture
def client(server, monkeypatch):
    monkeypatch.setenv("PHOENIX_DISCOVER_CONFIG", "false")  # no reading of a local Phoenix config
    for name in ("PHOENIX_COLLECTOR_ENDPOINT", "PHOENIX_API_KEY", "PHOENIX_CLIENT_HEADERS", "PHOENIX_PROJECT_NAME"):
        monkeypatch.delenv(name, raising=False)
    c = phoenix_client.Client(base_url=server.http_url)
    yield c
    c._client.close()


def _trace(server) -> dict[str, str]:
    return send_trace(server, service="rag", name="answer", attributes={"input.value": "q", "output.value": "a"})


def _annotations(server, span_id: str) -> list[dict]:
    """Current annotations on a span, joined to the span as ``spans`` shows it."""
    return sql(
        server,
        "SELECT a.name, a.label, a.score, a.explanation, a.annotator_kind, a.source_id, a.metadata, a.channel, "
        "a.versions, s.name AS span_name, s.feedback_count "
        "FROM annotations a JOIN spans s USING (trace_id, span_id) WHERE a.span_id = $s ORDER BY a.name, a.source_id",
        {"s": span_id},
    )


def test_log_span_annotations_sync_and_async_land_on_the_spans(server, client):
    ids = _trace(server)
    inserted = client.spans.log_span_annotations(
        span_annotations=[
            {
                "name": "correctness",
                "annotator_kind": "LLM",
                "span_id": ids["root"],
                "result": {"label": "incorrect", "score": 0.25, "explanation": "wrong order id"},
                "metadata": {"model": "judge-1"},
            },
            {
                "name": "relevance",
                "annotator_kind": "CODE",
                "span_id": ids["child"],
                "result": {"label": "relevant", "score": 1.0},
            },
        ],
        sync=True,
    )
    assert isinstance(inserted, list) and len(inserted) == 2
    stored = {r["feedback_id"] for r in sql(server, "SELECT feedback_id FROM feedback")}
    assert {i["id"] for i in inserted} == stored
    # sync=False: Phoenix answers and the client returns None; the annotation is stored all the same
    assert (
        client.spans.log_span_annotations(
            span_annotations=[
                {
                    "name": "helpfulness",
                    "annotator_kind": "HUMAN",
                    "span_id": ids["root"],
                    "result": {"score": 0.5, "explanation": "partly"},
                }
            ]
        )
        is None
    )
    root = _annotations(server, ids["root"])
    assert [(a["name"], a["label"], a["score"], a["explanation"], a["annotator_kind"]) for a in root] == [
        ("correctness", "incorrect", 0.25, "wrong order id", "LLM"),
        ("helpfulness", None, 0.5, "partly", "HUMAN"),
    ]
    assert json.loads(root[0]["metadata"]) == {"model": "judge-1"}
    assert {a["channel"] for a in root} == {"phoenix_span_annotation"}
    assert {a["span_name"] for a in root} == {"answer"} and root[0]["feedback_count"] == 2
    [child] = _annotations(server, ids["child"])
    assert (child["name"], child["label"], child["score"], child["annotator_kind"], child["span_name"]) == (
        "relevance",
        "relevant",
        1.0,
        "CODE",
        "retrieve",
    )
    # Phoenix annotations are annotations, not attribute patches: the span's attributes are untouched
    [row] = sql(server, "SELECT attributes, user_feedback FROM spans WHERE span_id = $s", {"s": ids["root"]})
    assert json.loads(row["attributes"]) == {"input.value": "q", "output.value": "a"} and row["user_feedback"] is None


def test_add_span_annotation_latest_wins_and_identifiers_keep_annotations_apart(server, client):
    ids = _trace(server)
    first = client.spans.add_span_annotation(
        span_id=ids["root"], annotation_name="tone", label="rude", score=0.0, annotator_kind="HUMAN", sync=True
    )
    assert first is not None and first["id"]
    # Phoenix: logging the same (name, span, identifier) again updates the annotation; here the
    # latest becomes current and the first is kept as history
    client.spans.add_span_annotation(
        span_id=ids["root"], annotation_name="tone", label="polite", score=1.0, annotator_kind="HUMAN", sync=True
    )
    [tone] = _annotations(server, ids["root"])
    assert (tone["label"], tone["score"], tone["versions"]) == ("polite", 1.0, 2)
    # distinct identifiers: several annotations with one name on one span, each updated on its own
    for identifier, label in (("judge-a", "pass"), ("judge-b", "fail"), ("judge-a", "fail")):
        client.spans.add_span_annotation(
            span_id=ids["child"],
            annotation_name="faithfulness",
            label=label,
            annotator_kind="LLM",
            identifier=identifier,
            sync=True,
        )
    child = _annotations(server, ids["child"])
    assert [(a["source_id"], a["label"], a["versions"]) for a in child] == [
        ("judge-a", "fail", 2),
        ("judge-b", "fail", 1),
    ]
    # a retry of the very same annotation leaves the current one as it was (Phoenix's upsert does too)
    client.spans.add_span_annotation(
        span_id=ids["child"], annotation_name="faithfulness", label="fail", annotator_kind="LLM", identifier="judge-b"
    )
    assert [(a["source_id"], a["label"]) for a in _annotations(server, ids["child"])] == [
        ("judge-a", "fail"),
        ("judge-b", "fail"),
    ]


def test_log_trace_annotations_apply_to_the_root_span(server, client):
    ids = _trace(server)
    inserted = client.traces.log_trace_annotations(
        trace_annotations=[
            {
                "name": "resolution",
                "annotator_kind": "HUMAN",
                "trace_id": ids["trace"],
                "result": {"label": "resolved", "score": 1.0, "explanation": "customer happy"},
            }
        ],
        sync=True,
    )
    assert inserted is not None and len(inserted) == 1
    [ann] = _annotations(server, ids["root"])
    assert (ann["name"], ann["label"], ann["score"], ann["explanation"], ann["annotator_kind"], ann["channel"]) == (
        "resolution",
        "resolved",
        1.0,
        "customer happy",
        "HUMAN",
        "phoenix_trace_annotation",
    )
    assert _annotations(server, ids["child"]) == []


def test_add_span_note_becomes_a_note_annotation(server, client):
    ids = _trace(server)
    first = client.spans.add_span_note(span_id=ids["child"], note="  retrieval missed the FAQ  ")
    second = client.spans.add_span_note(span_id=ids["child"], note="fixed in v2")
    assert first["id"] and second["id"] and first["id"] != second["id"]  # notes accumulate
    rows = sql(
        server,
        "SELECT feedback_id, name, label, score, explanation, annotator_kind, channel, span_id FROM feedback "
        "ORDER BY seq",
    )
    assert [r["feedback_id"] for r in rows] == [first["id"], second["id"]]
    assert {(r["name"], r["label"], r["score"], r["annotator_kind"], r["channel"], r["span_id"]) for r in rows} == {
        ("note", None, None, "HUMAN", "phoenix_span_note", ids["child"])
    }
    assert [r["explanation"] for r in rows] == ["retrieval missed the FAQ", "fixed in v2"]  # the client strips
    [current] = _annotations(server, ids["child"])
    assert (current["name"], current["explanation"], current["versions"], current["feedback_count"]) == (
        "note",
        "fixed in v2",
        2,
        2,
    )


def test_span_note_before_its_span_is_kept_and_bad_notes_are_refused(server, client):
    span_id = "0123456789abcdef"
    got = client.spans.add_span_note(span_id=span_id, note="span not exported yet")
    assert sql(server, "SELECT feedback_id, span_id FROM orphan_feedback") == [
        {"feedback_id": got["id"], "span_id": span_id}
    ]
    with pytest.raises(httpx.HTTPStatusError) as info:
        client.spans.add_span_note(span_id="not-a-span-id", note="x")
    assert info.value.response.status_code == 400
    assert "data.span_id: must be 16 hex digits" in info.value.response.json()["error"]
    with httpx.Client(base_url=server.http_url) as http:
        for body, needle in (
            ({"data": {"span_id": span_id, "note": " "}}, "data.note: must be a non-empty string"),
            ({"data": {"span_id": span_id, "note": "x", "colour": 1}}, "unknown field 'colour'"),
            ({"data": {"note": "x"}}, "data.span_id: required"),
            ({"span_id": span_id, "note": "x"}, 'expected {"data"'),
        ):
            r = http.post("/v1/span_notes", json=body)
            assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)
        # notes with an identifier (newer Phoenix clients): the latest per identifier is current
        for text in ("draft", "final"):
            r = http.post("/v1/span_notes", json={"data": {"span_id": span_id, "note": text, "identifier": "n1"}})
            assert r.status_code == 200
        # a trace note lands on the root span
        ids = _trace(server)
        r = http.post("/v1/trace_notes", json={"data": {"trace_id": ids["trace"], "note": "whole conversation"}})
        assert r.status_code == 200 and r.json()["data"]["id"]
    assert sql(server, "SELECT count(*) AS n FROM feedback WHERE span_id = $s", {"s": span_id}) == [{"n": 3}]
    assert sql(
        server,
        "SELECT f.explanation FROM feedback f WHERE f.span_id = $s AND f.source_id = 'n1' "
        "ORDER BY f.feedback_time DESC, f.seq DESC LIMIT 1",
        {"s": span_id},
    ) == [{"explanation": "final"}]
    [note] = _annotations(server, ids["root"])
    assert (note["name"], note["explanation"], note["channel"]) == ("note", "whole conversation", "phoenix_trace_note")


def test_annotation_before_its_span_and_the_async_client(server, monkeypatch):
    """Unlike Phoenix, an annotation for a span not stored yet is accepted and kept; it shows on the
    span once the span arrives. Sent with the client's ``AsyncClient``."""
    monkeypatch.setenv("PHOENIX_DISCOVER_CONFIG", "false")

    async def annotate(span_id: str) -> list:
        client = phoenix_client.AsyncClient(base_url=server.http_url)
        try:
            return await client.spans.log_span_annotations(
                span_annotations=[
                    {
                        "name": "groundedness",
                        "annotator_kind": "LLM",
                        "span_id": span_id,
                        "result": {"label": "grounded", "score": 0.9},
                    }
                ],
                sync=True,
            )
        finally:
            await client._client.aclose()

    trace_id, span_id = "7a" * 16, "3c" * 8
    [inserted] = asyncio.run(annotate(span_id))
    assert sql(server, "SELECT feedback_id FROM orphan_feedback") == [{"feedback_id": inserted["id"]}]
    assert _annotations(server, span_id) == []
    span = Span(trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id), name="late", end_time_unix_nano=9)
    req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])
    with httpx.Client(base_url=server.http_url) as http:
        r = http.post("/v1/traces", content=req.SerializeToString(), headers={"content-type": "application/x-protobuf"})
        assert r.status_code == 200
    [ann] = _annotations(server, span_id)
    assert (ann["name"], ann["label"], ann["score"], ann["annotator_kind"], ann["span_name"]) == (
        "groundedness",
        "grounded",
        0.9,
        "LLM",
        "late",
    )
    assert sql(server, "SELECT count(*) AS n FROM orphan_feedback") == [{"n": 0}]
