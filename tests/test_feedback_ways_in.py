"""The ways feedback comes in that ``test_feedback_api.py`` and ``test_receivers.py`` leave out, each
used by a real client, each checked by what ``spans`` (and ``annotations``) then show:

* Node SDK log events beyond the plain ``user_feedback`` one (``tests/interop/node/send.mjs
  --feedback-extra``): ``gen_ai.evaluation.result`` logs, a ``feedback`` log with a map body and a
  client id, a log named only by the older ``event.name`` attribute, and span events that name
  another span (``feedback.trace_id`` / ``feedback.span_id``);
* Python SDK span events: the default ``user_feedback`` name, trace-level post-hoc events from a
  later trace, ``gen_ai.evaluation.result`` span events, event times deciding who wins, a
  ``feedback.id`` shared with a later PATCH (one record whichever way it came), configured names;
* Python SDK log records: ``gen_ai.evaluation.result`` and session-targeted feedback events;
* OpenInference carrier spans in their other scopes: ``trace.annotations``, ``session.annotations``,
  ``evaluations``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_feedback.server import Server

from .conftest import ROOT, make_server, sql

NODE_DIR = ROOT / "tests" / "interop" / "node"
T0 = 1_790_000_000_000_000_000  # an instant in 2026, in ns


def _hex(ctx: SpanContext) -> tuple[str, str]:
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _span_row(server: Server, span_id: str) -> dict[str, Any]:
    [row] = sql(server, "SELECT * FROM spans WHERE span_id = $s", {"s": span_id})
    row["attributes"] = json.loads(row["attributes"])
    return row


def _annotations(server: Server, span_id: str) -> list[dict[str, Any]]:
    return sql(
        server,
        "SELECT name, label, score, explanation, annotator_kind, source_id, channel FROM annotations "
        "WHERE span_id = $s ORDER BY name",
        {"s": span_id},
    )


def _provider(server: Server, *, http: bool = False, service: str = "app") -> TracerProvider:
    exporter = (
        HttpSpanExporter(endpoint=server.http_url + "/v1/traces")
        if http
        else OTLPSpanExporter(endpoint=server.grpc_target, insecure=True)
    )
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


# -- Node SDK ------------------------------------------------------------------------------------------


def _run_node(protocol: str, endpoint: str, out: Path) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed on this machine (the Node.js interop client needs Node >= 20)")
    assert (NODE_DIR / "node_modules").is_dir(), "npm ci --prefix tests/interop/node --no-audit --no-fund"
    result = subprocess.run(
        [node, str(NODE_DIR / "send.mjs"), protocol, endpoint, str(out), "--feedback-extra"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, f"send.mjs failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["feedbackExtra"] is True, doc
    return doc


@pytest.mark.parametrize("protocol", ["grpc", "http-proto"])
def test_node_sdk_feedback_log_events_and_span_events(server: Server, tmp_path: Path, protocol: str) -> None:
    endpoint = server.grpc_target if protocol == "grpc" else server.http_url
    doc = _run_node(protocol, f"http://{endpoint}" if protocol == "grpc" else endpoint, tmp_path / "out.json")
    ids = {s["name"]: s["spanId"] for s in doc["spans"]}
    assert set(ids) == {"chat", "retrieve", "llm", "feedback", "judge"}
    assert {lg["eventName"] for lg in doc["logs"]} >= {"user_feedback", "gen_ai.evaluation.result", "feedback"}

    chat = _span_row(server, ids["chat"])
    # send.mjs's own log event (negative, 2) and the judge's span event naming chat (incorrect)
    assert (chat["user_feedback"], chat["user_feedback_rating"], chat["user_feedback_category"]) == (
        "negative",
        2.0,
        "incorrect",
    )
    assert chat["feedback_count"] == 2
    llm = _span_row(server, ids["llm"])
    # the `feedback` log (thumbs_down normalised, category from its map body) and the log named by
    # the `event.name` attribute alone (comment)
    assert (llm["user_feedback"], llm["user_feedback_category"], llm["user_feedback_comment"]) == (
        "negative",
        "timeout",
        "too slow",
    )
    assert llm["feedback_count"] == 2
    assert llm["attributes"]["gen_ai.request.model"] == "test-model"  # the span's own attributes stay
    [by_id] = sql(
        server,
        "SELECT span_id, annotator_kind, source_id, channel FROM feedback WHERE feedback_id = 'node-fb-1'",
    )
    assert by_id == {"span_id": ids["llm"], "annotator_kind": "HUMAN", "source_id": "u-node", "channel": "otlp_log"}

    retrieve = _span_row(server, ids["retrieve"])
    assert retrieve["feedback_count"] == 1 and retrieve["user_feedback"] is None
    assert _annotations(server, ids["retrieve"]) == [
        {
            "name": "relevance",
            "label": "irrelevant",
            "score": 0.25,
            "explanation": "the FAQ was not retrieved",
            "annotator_kind": "LLM",
            "source_id": "judge-model",
            "channel": "otlp_log",
        }
    ]
    assert _annotations(server, ids["judge"]) == [
        {
            "name": "faithfulness",
            "label": "partial",
            "score": 0.5,
            "explanation": None,
            "annotator_kind": "LLM",
            "source_id": None,
            "channel": "span_event",
        }
    ]
    assert _span_row(server, ids["feedback"])["feedback_count"] == 0
    assert sql(server, "SELECT count(*) AS n FROM orphan_feedback") == [{"n": 0}]


# -- Python SDK span events ------------------------------------------------------------------------------


def test_python_sdk_span_events(server: Server) -> None:
    provider = _provider(server, http=True)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("answer") as answer:
        with tracer.start_as_current_span("retrieve") as retrieve:
            # two thumbs on one span, added out of time order: the later feedback time wins
            retrieve.add_event("user_feedback", {"user_feedback": "up"}, timestamp=T0 + 2_000)
            retrieve.add_event("user_feedback", {"user_feedback": "down", "note": "x"}, timestamp=T0 + 1_000)
            retrieve.add_event(
                "gen_ai.evaluation.result",
                {
                    "gen_ai.evaluation.name": "context_relevance",
                    "gen_ai.evaluation.score.value": 0.75,
                    "gen_ai.evaluation.score.label": "relevant",
                    "gen_ai.evaluation.explanation": "2 of 3 passages on topic",
                },
                timestamp=T0,
            )
            retrieve.add_event("retrieved", {"documents": 3})  # an ordinary event is no feedback
    answer_trace, answer_span = _hex(answer.get_span_context())
    _, retrieve_span = _hex(retrieve.get_span_context())
    # minutes later, a separate trace (the feedback request) carries events about the answer:
    # trace-level (lands on the root span) and about one span, with an id shared with a PATCH below
    with tracer.start_as_current_span("feedback-request") as later:
        later.add_event(
            "feedback",
            {"feedback.trace_id": answer_trace, "user_feedback_rating": 4, "user_feedback_comment": "ok"},
            timestamp=T0 + 60_000_000_000,
        )
        later.add_event(
            "feedback",
            {"feedback.trace_id": answer_trace, "feedback.span_id": retrieve_span, "feedback.id": "shared-1",
             "user_feedback_category": "stale"},
            timestamp=T0 + 61_000_000_000,
        )  # fmt: skip
    provider.shutdown()
    # the same feedback id again through another way in: it is one record, the first one stays
    with httpx.Client(base_url=server.http_url) as http:
        r = http.patch(
            f"/v1/traces/{answer_trace}/spans/{retrieve_span}",
            json={"id": "shared-1", "attributes": {"user_feedback_category": "changed"}},
        )
        assert r.status_code == 200
    root = _span_row(server, answer_span)
    assert (root["user_feedback_rating"], root["user_feedback_comment"], root["feedback_count"]) == (4.0, "ok", 1)
    assert root["last_feedback_time"] == datetime.fromtimestamp(T0 // 10**9 + 60, UTC).replace(tzinfo=None)
    child = _span_row(server, retrieve_span)
    assert child["user_feedback"] == "positive"  # "up" at T0+2us beats "down" at T0+1us
    assert child["attributes"]["note"] == "x"  # a key only the older event set stays
    assert child["user_feedback_category"] == "stale"
    assert child["feedback_count"] == 4  # two thumbs, the evaluation, shared-1 once
    assert _annotations(server, retrieve_span) == [
        {
            "name": "context_relevance",
            "label": "relevant",
            "score": 0.75,
            "explanation": "2 of 3 passages on topic",
            "annotator_kind": "LLM",
            "source_id": None,
            "channel": "span_event",
        }
    ]
    assert sql(server, "SELECT count(*) AS n FROM feedback WHERE feedback_id = 'shared-1'") == [{"n": 1}]
    [later_row] = sql(server, "SELECT feedback_count FROM spans WHERE name = 'feedback-request'")
    assert later_row == {"feedback_count": 0}


def test_configured_feedback_event_names(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "names.duckdb", feedback_events=("thumbs",))
    try:
        provider = _provider(srv)
        with provider.get_tracer("app").start_as_current_span("answer") as span:
            span.add_event("thumbs", {"user_feedback": "negative"})
            span.add_event("feedback", {"user_feedback_comment": "not feedback on this server"})
            span.add_event(
                "gen_ai.evaluation.result", {"gen_ai.evaluation.name": "tone", "gen_ai.evaluation.score.value": 1}
            )
        provider.shutdown()
        row = _span_row(srv, _hex(span.get_span_context())[1])
        assert (row["user_feedback"], row["user_feedback_comment"], row["feedback_count"]) == ("negative", None, 2)
        assert [e["name"] for e in json.loads(row["events"])] == ["thumbs", "feedback", "gen_ai.evaluation.result"]
    finally:
        srv.stop()


# -- Python SDK log records --------------------------------------------------------------------------------


def test_python_sdk_log_records_evaluation_and_session_feedback(server: Server) -> None:
    provider = _provider(server)
    tracer = provider.get_tracer("app")
    spans = {}
    for name, session in (("turn-1", "sess-42"), ("turn-2", "sess-42"), ("other", "sess-7")):
        with tracer.start_as_current_span(name, attributes={"session.id": session}) as root:
            with tracer.start_as_current_span("llm") as llm:
                pass
        spans[name] = (_hex(root.get_span_context()), _hex(llm.get_span_context()))
    provider.shutdown()

    logs = LoggerProvider(resource=Resource.create({"service.name": "judge"}))
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=server.grpc_target, insecure=True)))
    logger = logs.get_logger("eval")
    (t1, _), (_, l1) = spans["turn-1"]
    ctx = trace.set_span_in_context(NonRecordingSpan(SpanContext(int(t1, 16), int(l1, 16), False, TraceFlags(1))))
    logger.emit(
        context=ctx,
        event_name="gen_ai.evaluation.result",
        attributes={
            "gen_ai.evaluation.name": "hallucination",
            "gen_ai.evaluation.score.value": 0.0,
            "gen_ai.evaluation.score.label": "hallucinated",
            "gen_ai.evaluation.explanation": "cites a policy that does not exist",
            "gen_ai.response.model": "judge-2",
        },
    )
    # an evaluator that failed: the error is kept with the annotation
    logger.emit(
        context=ctx,
        event_name="gen_ai.evaluation.result",
        attributes={"gen_ai.evaluation.name": "toxicity", "error.type": "timeout"},
    )
    # feedback about a whole conversation, no trace context: session.id names every trace in it
    logger.emit(event_name="user_feedback", attributes={"session.id": "sess-42", "user_feedback_rating": 1})
    logs.shutdown()

    assert _span_row(server, l1)["feedback_count"] == 2
    [hallu] = sql(
        server,
        "SELECT name, label, score, explanation, annotator_kind, source_id, channel FROM annotations "
        "WHERE span_id = $s AND name = 'hallucination'",
        {"s": l1},
    )
    assert hallu == {
        "name": "hallucination",
        "label": "hallucinated",
        "score": 0.0,
        "explanation": "cites a policy that does not exist",
        "annotator_kind": "LLM",
        "source_id": "judge-2",
        "channel": "otlp_log",
    }
    [tox] = sql(server, "SELECT error, score FROM annotations WHERE name = 'toxicity'")
    assert tox == {"error": "timeout", "score": None}
    ratings = {
        name: _span_row(server, root_span)["user_feedback_rating"] for name, ((_, root_span), _) in spans.items()
    }
    assert ratings == {"turn-1": 1.0, "turn-2": 1.0, "other": None}
    assert _span_row(server, spans["turn-2"][1][1])["user_feedback_rating"] is None  # roots only


# -- OpenInference carrier spans ----------------------------------------------------------------------------


def test_openinference_trace_session_and_evaluation_carriers(server: Server) -> None:
    provider = _provider(server, http=True)
    tracer = provider.get_tracer("app")
    roots = {}
    for name in ("q1", "q2"):
        with tracer.start_as_current_span(name, attributes={"session.id": "conv-9"}) as root:
            with tracer.start_as_current_span("tool") as tool:
                pass
        roots[name] = root.get_span_context()
    tool_ctx = tool.get_span_context()  # q2's child
    # post-hoc carriers, each a new span linked to its target
    with tracer.start_as_current_span(
        "annotate-trace",
        links=[trace.Link(tool_ctx)],
        attributes={
            "trace.annotations.0.annotation.name": "task_success",
            "trace.annotations.0.annotation.label": "failed",
            "trace.annotations.0.annotation.score": 0.0,
            "trace.annotations.0.annotation.annotator_kind": "HUMAN",
        },
    ):
        pass
    with tracer.start_as_current_span(
        "annotate-session",
        attributes={
            "session.id": "conv-9",
            "session.annotations.0.annotation.name": "frustration",
            "session.annotations.0.annotation.label": "high",
            "session.annotations.0.annotation.annotator_kind": "LLM",
        },
    ):
        pass
    with tracer.start_as_current_span(
        "evaluate-tool",
        links=[trace.Link(tool_ctx)],
        attributes={
            "evaluations.0.evaluation.name": "tool_args_valid",
            "evaluations.0.evaluation.score": 1.0,
            "evaluations.0.evaluation.annotator_kind": "CODE",
            "evaluations.0.evaluation.explanation": "schema ok",
            "evaluations.1.evaluation.name": "latency_ok",
            "evaluations.1.evaluation.label": "slow",
            "evaluations.1.evaluation.annotator_kind": "CODE",
        },
    ):
        pass
    provider.shutdown()
    q1_root, q2_root = (_hex(roots[n])[1] for n in ("q1", "q2"))
    tool_span = _hex(tool_ctx)[1]
    short = [(a["name"], a["label"], a["score"], a["annotator_kind"]) for a in _annotations(server, q2_root)]
    assert short == [("frustration", "high", None, "LLM"), ("task_success", "failed", 0.0, "HUMAN")]
    assert [(a["name"], a["label"]) for a in _annotations(server, q1_root)] == [("frustration", "high")]
    tool_anns = _annotations(server, tool_span)
    assert [(a["name"], a["label"], a["score"], a["explanation"], a["annotator_kind"]) for a in tool_anns] == [
        ("latency_ok", "slow", None, None, "CODE"),
        ("tool_args_valid", None, 1.0, "schema ok", "CODE"),
    ]
    assert {a["channel"] for a in tool_anns} == {"openinference"}
    assert _span_row(server, tool_span)["feedback_count"] == 2
    assert _span_row(server, q2_root)["feedback_count"] == 2
    # the carriers are spans too; those aimed at other spans by a link have no feedback of their own
    carriers = sql(server, "SELECT name, feedback_count FROM spans WHERE name IN ('annotate-trace', 'evaluate-tool')")
    assert sorted(c["feedback_count"] for c in carriers) == [0, 0]


def test_session_annotation_carrier_is_not_a_trace_of_the_session(server: Server) -> None:
    """A session.annotations carrier span carries session.id; its own trace is feedback, not a turn of the
    session, so it gets no annotation and is not counted in ``traces`` (which would dilute the rates)."""
    provider = _provider(server)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("turn", attributes={"session.id": "conv-1"}):
        pass
    with tracer.start_as_current_span(
        "annotate-session",
        attributes={"session.id": "conv-1", "session.annotations.0.annotation.name": "csat",
                    "session.annotations.0.annotation.label": "unhappy"},
    ):  # fmt: skip
        pass
    provider.shutdown()
    rows = sql(server, "SELECT s.name FROM annotations a JOIN spans s USING (trace_id, span_id) ORDER BY s.name")
    assert rows == [{"name": "turn"}]
    assert sql(server, "SELECT root_name FROM traces") == [{"root_name": "turn"}]
    assert sql(server, "SELECT annotation_carrier FROM spans ORDER BY name") == [
        {"annotation_carrier": True},
        {"annotation_carrier": False},
    ]


def test_a_retried_otlp_log_export_is_one_feedback_record(server: Server) -> None:
    """Exporters retry (UNAVAILABLE, timeouts, a Collector's retry queue): the same log record sent
    again, over the same or another transport, must not count twice - as for span events."""
    trace_id, span_id = "1f" * 16, "2e" * 8
    record = LogRecord(
        time_unix_nano=T0,
        event_name="user_feedback",
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(span_id),
        attributes=[
            KeyValue(key="user_feedback", value=AnyValue(string_value="negative")),
            KeyValue(key="user_feedback_rating", value=AnyValue(int_value=2)),
        ],
    )
    other = LogRecord(
        time_unix_nano=T0 + 1,
        event_name="user_feedback",
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(span_id),
        attributes=[KeyValue(key="user_feedback_comment", value=AnyValue(string_value="second thought"))],
    )
    request = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[record])])])
    with grpc.insecure_channel(server.grpc_target) as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            request_serializer=ExportLogsServiceRequest.SerializeToString,
            response_deserializer=ExportLogsServiceResponse.FromString,
        )
        export(request, timeout=10)
        export(request, timeout=10)  # the retry
    with httpx.Client(base_url=server.http_url) as http:  # and once more over OTLP/HTTP
        r = http.post(
            "/v1/logs", content=request.SerializeToString(), headers={"content-type": "application/x-protobuf"}
        )
        assert r.status_code == 200
        again = ExportLogsServiceRequest(
            resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[other])])]
        )  # a different record is a new one
        r = http.post("/v1/logs", content=again.SerializeToString(), headers={"content-type": "application/x-protobuf"})
        assert r.status_code == 200
    assert sql(server, "SELECT count(*) AS n FROM log_records") == [{"n": 4}]  # the log table keeps what came
    assert sql(server, "SELECT count(*) AS n FROM feedback") == [{"n": 2}]
    span = Span(trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id), name="late", end_time_unix_nano=T0)
    with httpx.Client(base_url=server.http_url) as http:
        req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])
        r = http.post("/v1/traces", content=req.SerializeToString(), headers={"content-type": "application/x-protobuf"})
        assert r.status_code == 200
    row = _span_row(server, span_id)
    assert (row["user_feedback"], row["user_feedback_rating"], row["user_feedback_comment"], row["feedback_count"]) == (
        "negative",
        2.0,
        "second thought",
        2,
    )


def test_openinference_identifiers_name_the_annotator(server: Server) -> None:
    """An annotation ``identifier`` works as in Phoenix: annotations with one name and different
    identifiers stay apart, the same identifier on another span is another annotation, and a new
    carrier with the same identifier updates the annotation (the latest is current)."""
    provider = _provider(server)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("answer") as answer:
        with tracer.start_as_current_span("llm") as llm:
            pass

    def carrier(target: SpanContext, label: str, identifier: str) -> None:
        with tracer.start_as_current_span(
            "annotate",
            links=[trace.Link(target)],
            attributes={
                "annotations.0.annotation.name": "correctness",
                "annotations.0.annotation.label": label,
                "annotations.0.annotation.annotator_kind": "LLM",
                "annotations.0.annotation.identifier": identifier,
            },
        ):
            pass

    carrier(answer.get_span_context(), "correct", "judge-a")
    carrier(llm.get_span_context(), "incorrect", "judge-a")  # same trace, same name and identifier, other span
    carrier(answer.get_span_context(), "incorrect", "judge-b")
    carrier(answer.get_span_context(), "partly", "judge-a")  # judge-a re-ran on the answer
    provider.shutdown()
    answer_span, llm_span = _hex(answer.get_span_context())[1], _hex(llm.get_span_context())[1]
    current = sql(
        server,
        "SELECT span_id, label, source_id, versions FROM annotations WHERE name = 'correctness' "
        "ORDER BY span_id = $a DESC, source_id",
        {"a": answer_span},
    )
    assert current == [
        {"span_id": answer_span, "label": "partly", "source_id": "judge-a", "versions": 2},
        {"span_id": answer_span, "label": "incorrect", "source_id": "judge-b", "versions": 1},
        {"span_id": llm_span, "label": "incorrect", "source_id": "judge-a", "versions": 1},
    ]
