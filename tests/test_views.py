"""Every analysis view against answers worked out by hand, on one fixed dataset sent through the real ways in.

The dataset: 10 traces over 2 services (support-bot over OTLP/gRPC, billing-bot over OTLP/HTTP), 2 models,
3 days. Each trace is a root ``chat`` span (input/output) with ``retrieve`` and ``llm`` children, some with a
``lookup_order`` tool span. Feedback comes through PATCH, the batch API and Phoenix-style annotations:
thumbs, ratings, categories, comments, an expected answer, ``annotation_status``, human and LLM-judge labels
and scores, code checks on tool spans; some feedback arrives late (older than what is already there), some
is overwritten or deleted, and one trace's feedback arrives before its spans.

``TRACES`` below is the hand-worked final state of every trace; aggregates are computed from it with plain
Python, and the as-of answers are written out case by case.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Status, StatusCode

from otel_feedback.cli import cli
from otel_feedback.server import Server

from .conftest import make_server, sql

D0 = datetime(2026, 3, 2)  # naive UTC, as DuckDB's TIMESTAMP_NS columns hold it
SUPPORT, BILLING = "support-bot", "billing-bot"
GPT, CLAUDE = "gpt-4o", "claude-3-5"


@dataclass(frozen=True)
class T:
    """One trace as sent, and its hand-worked final state."""

    k: int
    service: str
    model: str
    start: datetime
    tool: bool
    feedback: str | None
    rating: float | None
    category: str | None
    comment: str | None
    sentiment: str | None
    has_user_feedback: bool

    @property
    def trace_id(self) -> str:
        return f"{0xFEED0000 + self.k:032x}"

    def span_id(self, j: int) -> str:
        """j: 0 root, 1 retrieve, 2 llm, 3 lookup_order."""
        return f"{(self.k << 8) + j + 1:016x}"


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return D0 + timedelta(days=day, hours=hour, minutes=minute)


TRACES = [
    T(1, SUPPORT, GPT, at(0, 9, 10), False, "positive", 5, None, "spot on", "positive", True),
    T(2, SUPPORT, GPT, at(0, 9, 40), True, "negative", 1, "incorrect", "wrong order status", "negative", True),
    # overwritten: negative / 2 / off-topic at 15:00, then positive / 4 / (category removed) at 16:00
    T(3, SUPPORT, CLAUDE, at(0, 14, 5), False, "positive", 4, None, None, "positive", True),
    # late: negative at 15:30 arrives first, positive at 15:10 arrives after it and loses
    T(4, BILLING, GPT, at(0, 14, 30), True, "negative", None, "slow", "too slow", "negative", True),
    T(5, BILLING, CLAUDE, at(1, 10, 0), False, None, 3, None, None, "neutral", True),
    # deleted: positive at 10:25, then user_feedback: null at 10:30
    T(6, SUPPORT, CLAUDE, at(1, 10, 20), False, None, None, None, None, None, False),
    T(7, BILLING, GPT, at(1, 16, 45), True, "negative", None, "incorrect", "made up a refund policy", "negative", True),
    # judges only, no user feedback
    T(8, SUPPORT, GPT, at(2, 8, 0), False, None, None, None, None, None, False),
    T(9, BILLING, CLAUDE, at(2, 8, 30), False, "positive", 5, None, None, "positive", True),
    # feedback arrives before the spans
    T(10, SUPPORT, CLAUDE, at(2, 11, 15), True, "negative", 2, "incorrect", None, "negative", True),
]
BY_K = {t.k: t for t in TRACES}

# Human and LLM-judge "correctness" on the root spans of traces 1-6 (the LLM re-ran on 3 and changed its mind:
# correct/0.7 first, then incorrect/0.4, which is the one that counts). 7 and 8 have an LLM label only.
CORRECTNESS_HUMAN = {1: ("correct", 1.0), 2: ("incorrect", 0.0), 3: ("correct", 1.0), 4: ("incorrect", 0.0),
                     5: ("correct", 1.0), 6: ("incorrect", 0.0)}  # fmt: skip
CORRECTNESS_LLM = {1: ("correct", 0.9), 2: ("incorrect", 0.2), 3: ("incorrect", 0.4), 4: ("incorrect", 0.1),
                   5: ("correct", 0.8), 6: ("correct", 0.6), 7: ("incorrect", 0.3), 8: ("correct", 0.95)}  # fmt: skip
# Scores only (no labels): correlation but no kappa.
HELPFULNESS_HUMAN = {1: 5.0, 2: 1.0, 3: 4.0}
HELPFULNESS_LLM = {1: 4.5, 2: 2.0, 3: 4.0}


class FixedIds(IdGenerator):
    """Trace and span ids chosen by the test, so expected answers can name them."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_ids: list[int] = []

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_ids.pop(0)


def ns(dt: datetime) -> int:
    return int(dt.replace(tzinfo=UTC).timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def iso(dt: datetime) -> str:
    return dt.isoformat() + "Z"


def send_trace(providers: dict[str, tuple[TracerProvider, FixedIds]], t: T) -> None:
    provider, ids = providers[t.service]
    ids.trace_id = int(t.trace_id, 16)
    ids.span_ids = [int(t.span_id(j), 16) for j in range(4)]
    tracer = provider.get_tracer("views-test")
    s0 = ns(t.start)
    root = tracer.start_span(
        "chat",
        start_time=s0,
        kind=otel_trace.SpanKind.SERVER,
        attributes={"input.value": f"question {t.k}", "output.value": f"answer {t.k}"},
    )
    ctx = otel_trace.set_span_in_context(root)
    retrieve = tracer.start_span("retrieve", context=ctx, start_time=s0 + 100_000_000)
    retrieve.set_attribute("retrieval.documents", 3)
    retrieve.end(end_time=s0 + 400_000_000)
    llm = tracer.start_span("llm", context=ctx, start_time=s0 + 500_000_000)
    llm.set_attribute("gen_ai.request.model", t.model)
    llm.end(end_time=s0 + 1_400_000_000)
    if t.tool:
        tool = tracer.start_span("lookup_order", context=ctx, start_time=s0 + 1_500_000_000)
        if t.k == 4:
            tool.set_status(Status(StatusCode.ERROR, "order service timed out"))
        tool.end(end_time=s0 + 1_900_000_000)
    root.end(end_time=s0 + 2_000_000_000)


@dataclass
class Dataset:
    server: Server
    cuts: dict[str, datetime]


def now() -> datetime:
    """The wall clock as a naive UTC datetime (the server stamps arrivals with the same clock)."""
    return datetime.now(UTC).replace(tzinfo=None)


def ok(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    srv = make_server(tmp_path_factory.mktemp("views") / "views.duckdb")
    providers: dict[str, tuple[TracerProvider, FixedIds]] = {}
    for service, exporter in (
        (SUPPORT, GrpcExporter(endpoint=srv.grpc_target, insecure=True)),
        (BILLING, HttpExporter(endpoint=f"{srv.http_url}/v1/traces")),
    ):
        ids = FixedIds()
        provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=ids)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        providers[service] = (provider, ids)
    cuts: dict[str, datetime] = {}
    h = httpx.Client(base_url=srv.http_url, timeout=30)

    def patch(t: T, body: dict[str, Any], span: int | None = None) -> None:
        path = f"/v1/traces/{t.trace_id}" + (f"/spans/{t.span_id(span)}" if span is not None else "")
        ok(h.patch(path, json=body))

    def batch(*records: dict[str, Any]) -> None:
        ok(h.post("/v1/feedback", json={"records": list(records)}))

    try:
        for t in TRACES[:9]:
            send_trace(providers, t)
        b = {k: BY_K[k] for k in BY_K}
        # trace 4: the newer record arrives first, the older one after it
        cuts["before_t4"] = now()
        patch(b[4], {"attributes": {"user_feedback": "down", "user_feedback_category": "slow",
                                    "user_feedback_comment": "too slow"}, "timestamp": iso(at(0, 15, 30))})  # fmt: skip
        cuts["between_t4"] = now()
        patch(b[4], {"attributes": {"user_feedback": "thumbs_up"}, "timestamp": iso(at(0, 15, 10))})
        cuts["after_t4"] = now()
        # user feedback on traces 1-3 and 5-9
        patch(b[1], {"attributes": {"user_feedback": "positive", "user_feedback_rating": 5,
                                    "user_feedback_comment": "spot on"}, "timestamp": iso(at(0, 9, 12))})  # fmt: skip
        patch(b[2], {"attributes": {"user_feedback": "negative", "user_feedback_rating": 1,
                                    "user_feedback_category": "incorrect", "user_feedback_comment": "wrong order status",
                                    "annotation_status": "empty",
                                    "user_feedback_timestamp": iso(at(0, 9, 45))}})  # fmt: skip
        patch(b[2], {"attributes": {"annotation_status": "filled"}, "timestamp": iso(at(0, 18, 0))})
        patch(b[3], {"attributes": {"user_feedback": "negative", "user_feedback_rating": 2,
                                    "user_feedback_category": "off-topic"}, "timestamp": iso(at(0, 15, 0))})  # fmt: skip
        patch(b[3], {"attributes": {"user_feedback": "positive", "user_feedback_rating": 4,
                                    "user_feedback_category": None}, "timestamp": iso(at(0, 16, 0))})  # fmt: skip
        batch(
            {"trace_id": b[5].trace_id, "attributes": {"user_feedback_rating": 3, "annotation_status": "empty"},
             "timestamp": iso(at(1, 10, 5))},
            {"trace_id": b[6].trace_id, "attributes": {"user_feedback": "positive"}, "timestamp": iso(at(1, 10, 25))},
            {"trace_id": b[6].trace_id, "attributes": {"user_feedback": None}, "timestamp": iso(at(1, 10, 30))},
            {"trace_id": b[7].trace_id, "attributes": {"user_feedback": "negative", "user_feedback_category": "incorrect",
             "user_feedback_comment": "made up a refund policy", "annotation_status": "empty"},
             "expected": "Refunds take 5 business days", "timestamp": iso(at(1, 17, 0))},
        )  # fmt: skip
        # trace 9: on the root span by its span id
        patch(b[9], {"attributes": {"user_feedback": "positive", "user_feedback_rating": 5},
                     "timestamp": iso(at(2, 9, 0))}, span=0)  # fmt: skip
        # judges: humans through the batch API, the LLM judge through Phoenix-style trace annotations
        batch(*[
            {"trace_id": BY_K[k].trace_id, "name": "correctness", "label": label, "score": score,
             "source": {"kind": "HUMAN", "id": "reviewer-1"}, "timestamp": iso(at(2, 20, 0))}
            for k, (label, score) in CORRECTNESS_HUMAN.items()
        ], *[
            {"trace_id": BY_K[k].trace_id, "name": "helpfulness", "score": score,
             "source": {"kind": "HUMAN", "id": "reviewer-1"}, "timestamp": iso(at(2, 20, 0))}
            for k, score in HELPFULNESS_HUMAN.items()
        ])  # fmt: skip
        first_run = {**CORRECTNESS_LLM, 3: ("correct", 0.7)}
        ok(h.post("/v1/trace_annotations", json={"data": [
            {"trace_id": BY_K[k].trace_id, "name": "correctness", "annotator_kind": "LLM",
             "result": {"label": label, "score": score, "explanation": f"judged {k}"}}
            for k, (label, score) in first_run.items()
        ] + [
            {"trace_id": BY_K[k].trace_id, "name": "helpfulness", "annotator_kind": "LLM", "result": {"score": score}}
            for k, score in HELPFULNESS_LLM.items()
        ]}))  # fmt: skip
        time.sleep(0.002)  # the re-run is stamped later than the first run
        ok(h.post("/v1/trace_annotations", json={"data": [
            {"trace_id": BY_K[3].trace_id, "name": "correctness", "annotator_kind": "LLM",
             "result": {"label": "incorrect", "score": 0.4, "explanation": "judged 3 again"}}]}))  # fmt: skip
        # evaluations of child spans: retrieval relevance (LLM, by span id alone), tool results (code checks)
        ok(h.post("/v1/span_annotations", json={"data": [
            {"span_id": BY_K[k].span_id(1), "name": "retrieval_relevance", "annotator_kind": "LLM",
             "result": {"label": label, "score": score}}
            for k, label, score in ((1, "relevant", 0.9), (2, "irrelevant", 0.1), (7, "irrelevant", 0.2))
        ]}))  # fmt: skip
        batch(
            {"trace_id": b[2].trace_id, "span_id": b[2].span_id(3), "name": "tool_result", "label": "error",
             "score": 0, "explanation": "order 123 not found", "source": {"kind": "CODE", "id": "tool-check"},
             "timestamp": iso(at(0, 9, 41))},
            {"trace_id": b[4].trace_id, "span_id": b[4].span_id(3), "name": "tool_result", "label": "ok",
             "score": 1, "source": {"kind": "CODE", "id": "tool-check"}, "timestamp": iso(at(0, 14, 31))},
        )  # fmt: skip
        # trace 10: its feedback (user thumbs and a tool attribute) comes before its spans
        batch(
            {"trace_id": b[10].trace_id, "attributes": {"user_feedback": "negative", "user_feedback_rating": 2,
             "user_feedback_category": "incorrect"}, "timestamp": iso(at(2, 11, 20))},
            {"trace_id": b[10].trace_id, "span_id": b[10].span_id(3), "attributes": {"tool_result": "timeout"},
             "source": {"kind": "CODE"}, "timestamp": iso(at(2, 11, 16))},
        )  # fmt: skip
        cuts["before_t10_spans"] = now()
        send_trace(providers, b[10])
        for provider, _ in providers.values():
            provider.shutdown()
        yield Dataset(srv, cuts)
    finally:
        h.close()
        srv.stop()


def q(data: Dataset, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return sql(data.server, query, params)


def trace_of(trace_id: str) -> T:
    [t] = [t for t in TRACES if t.trace_id == trace_id]
    return t


# -- spans and traces ------------------------------------------------------------------------------


def test_everything_arrived_and_nothing_is_orphaned(data: Dataset) -> None:
    assert q(data, "SELECT count(*) AS n FROM span_log") == [{"n": sum(4 if t.tool else 3 for t in TRACES)}]
    assert q(data, "SELECT count(*) AS n FROM orphan_feedback") == [{"n": 0}]


def test_spans_merge_feedback_onto_the_right_span(data: Dataset) -> None:
    rows = {(r["trace_id"], r["span_id"]): r for r in q(data, "SELECT * FROM spans")}
    for t in TRACES:
        root = rows[(t.trace_id, t.span_id(0))]
        assert root["parent_span_id"] is None and root["name"] == "chat" and root["service_name"] == t.service
        assert root["user_feedback"] == t.feedback, t.k
        assert root["user_feedback_rating"] == t.rating, t.k
        assert root["user_feedback_category"] == t.category, t.k
        assert root["user_feedback_comment"] == t.comment, t.k
        attrs = json.loads(root["attributes"])
        assert attrs["input.value"] == f"question {t.k}" and attrs["output.value"] == f"answer {t.k}"
        for j in (1, 2):
            child = rows[(t.trace_id, t.span_id(j))]
            assert child["parent_span_id"] == t.span_id(0) and child["user_feedback"] is None
        assert json.loads(rows[(t.trace_id, t.span_id(2))]["attributes"])["gen_ai.request.model"] == t.model
    # a removed key is gone from the merged attributes, not null
    assert "user_feedback" not in json.loads(rows[(BY_K[6].trace_id, BY_K[6].span_id(0))]["attributes"])
    assert "user_feedback_category" not in json.loads(rows[(BY_K[3].trace_id, BY_K[3].span_id(0))]["attributes"])
    # the span's own attributes are kept apart
    t2 = rows[(BY_K[2].trace_id, BY_K[2].span_id(0))]
    assert json.loads(t2["span_attributes"]) == {"input.value": "question 2", "output.value": "answer 2"}
    assert json.loads(t2["attributes"])["annotation_status"] == "filled"
    assert t2["user_feedback_timestamp"] == at(0, 9, 45)
    # feedback counts: trace 2's root has 2 patches + 2 correctness + 2 helpfulness annotations;
    # its tool span the code check; trace 10's tool span the attribute patch
    assert t2["feedback_count"] == 6
    # the latest is the LLM judge's (stamped on arrival, during this test), not the human's (day 2, 20:00)
    assert data.cuts["after_t4"] < t2["last_feedback_time"] < data.cuts["before_t10_spans"]
    assert rows[(BY_K[2].trace_id, BY_K[2].span_id(3))]["feedback_count"] == 1
    tool10 = rows[(BY_K[10].trace_id, BY_K[10].span_id(3))]
    assert json.loads(tool10["attributes"])["tool_result"] == "timeout" and tool10["feedback_count"] == 1
    assert rows[(BY_K[8].trace_id, BY_K[8].span_id(1))]["feedback_count"] == 0


def test_traces_one_row_per_trace(data: Dataset) -> None:
    rows = q(data, "SELECT * FROM traces ORDER BY start_time")
    assert [r["trace_id"] for r in rows] == [t.trace_id for t in TRACES]
    for r in rows:
        t = trace_of(r["trace_id"])
        assert r["root_span_id"] == t.span_id(0) and r["root_name"] == "chat"
        assert r["service_name"] == t.service and r["model"] == t.model
        assert r["start_time"] == t.start
        assert r["end_time"] == t.start + timedelta(seconds=2)
        assert r["duration_ms"] == 2000.0
        assert r["span_count"] == (4 if t.tool else 3)
        assert r["error_count"] == (1 if t.k == 4 else 0)
        assert r["status_code"] == ("ERROR" if t.k == 4 else "UNSET")
        assert (r["input"], r["output"]) == (f"question {t.k}", f"answer {t.k}")
        got = (r["user_feedback"], r["user_feedback_rating"], r["user_feedback_category"], r["user_feedback_comment"])
        assert got == (t.feedback, t.rating, t.category, t.comment), t.k
        assert r["sentiment"] == t.sentiment, t.k
        assert r["has_user_feedback"] == t.has_user_feedback, t.k
    # judges' annotations count as feedback records, but not as user feedback
    t8 = next(r for r in rows if r["trace_id"] == BY_K[8].trace_id)
    assert t8["feedback_count"] == 1 and t8["has_user_feedback"] is False and t8["sentiment"] is None


# -- feedback metrics ------------------------------------------------------------------------------


def metrics(traces: list[T]) -> dict[str, Any]:
    """feedback rate, positive rate, mean rating - by the definitions in the README."""
    with_fb = [t for t in traces if t.has_user_feedback]
    pos = [t for t in traces if t.sentiment == "positive"]
    neg = [t for t in traces if t.sentiment == "negative"]
    ratings = [t.rating for t in traces if t.rating is not None]
    return {
        "traces": len(traces),
        "traces_with_feedback": len(with_fb),
        "feedback_rate": len(with_fb) / len(traces),
        "positive": len(pos),
        "negative": len(neg),
        "positive_rate": len(pos) / (len(pos) + len(neg)) if pos or neg else None,
        "mean_rating": sum(ratings) / len(ratings) if ratings else None,
        "ratings": len(ratings),
    }


def assert_metrics(row: dict[str, Any], want: dict[str, Any], where: Any) -> None:
    for key, value in want.items():
        if isinstance(value, float):
            assert row[key] == pytest.approx(value), (where, key)
        else:
            assert row[key] == value, (where, key)


def test_feedback_summary(data: Dataset) -> None:
    [row] = q(data, "SELECT * FROM feedback_summary")
    want = metrics(TRACES)
    # by hand: 8 of 10 traces have user feedback (not 6: deleted; not 8: judges only), 3 positive, 4 negative,
    # ratings 5, 1, 4, 3, 5, 2
    assert (want["traces_with_feedback"], want["positive"], want["negative"]) == (8, 3, 4)
    assert want["mean_rating"] == pytest.approx(20 / 6) and want["positive_rate"] == pytest.approx(3 / 7)
    assert row["scope"] == "all"
    assert_metrics(row, want, "all")


@pytest.mark.parametrize(
    ("view", "column", "key"),
    [
        ("feedback_by_hour", "hour", lambda t: t.start.replace(minute=0)),
        ("feedback_by_day", "day", lambda t: t.start.replace(hour=0, minute=0)),
        ("feedback_by_service", "service_name", lambda t: t.service),
        ("feedback_by_model", "model", lambda t: t.model),
    ],
)
def test_feedback_by_group(data: Dataset, view: str, column: str, key: Any) -> None:
    groups: dict[Any, list[T]] = {}
    for t in TRACES:
        groups.setdefault(key(t), []).append(t)
    rows = q(data, f"SELECT * FROM {view}")
    got = {r[column] if not isinstance(r[column], datetime) else r[column].replace(tzinfo=None): r for r in rows}
    assert sorted(got) == sorted(groups)
    assert [r[column] for r in rows] == sorted(r[column] for r in rows)  # ordered by the group
    for group, traces in groups.items():
        assert_metrics(got[group], metrics(traces), (view, group))
    if view == "feedback_by_day":
        # by hand: day 0 has 4 traces, all with feedback, 2 positive, 2 negative, ratings 5, 1, 4
        assert_metrics(got[D0], {"traces": 4, "traces_with_feedback": 4, "positive_rate": 0.5,
                                 "mean_rating": 10 / 3}, "day 0")  # fmt: skip


def test_feedback_categories(data: Dataset) -> None:
    rows = q(data, "SELECT * FROM feedback_categories")
    counts: dict[str, list[T]] = {}
    for t in TRACES:
        if t.category:
            counts.setdefault(t.category, []).append(t)
    total = sum(len(v) for v in counts.values())
    want = sorted(
        (
            {
                "category": c,
                "traces": len(ts),
                "share": len(ts) / total,
                "negative": sum(t.sentiment == "negative" for t in ts),
            }
            for c, ts in counts.items()
        ),
        key=lambda r: (-r["traces"], r["category"]),
    )
    assert want[0]["category"] == "incorrect" and want[0]["traces"] == 3  # 2, 7, 10 (3's off-topic was removed)
    assert [r["category"] for r in rows] == [w["category"] for w in want]
    for r, w in zip(rows, want, strict=True):
        assert r["traces"] == w["traces"] and r["negative"] == w["negative"]
        assert r["share"] == pytest.approx(w["share"])


# -- why did it fail -------------------------------------------------------------------------------


def ev(span: str, name: str, label: str | None, score: float | None, kind: str, source: str | None,
       explanation: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"span_name": span, "name": name, "label": label, "score": score, "explanation": explanation,
            "annotator_kind": kind, "source_id": source}  # fmt: skip


def root_evals(k: int) -> list[dict[str, Any]]:
    """The root span's annotations, in the view's order (name, then annotator kind)."""
    out = []
    if k in CORRECTNESS_HUMAN:
        label, score = CORRECTNESS_HUMAN[k]
        out.append(ev("chat", "correctness", label, score, "HUMAN", "reviewer-1"))
    if k in CORRECTNESS_LLM:
        label, score = CORRECTNESS_LLM[k]
        out.append(ev("chat", "correctness", label, score, "LLM", None, f"judged {k}" + (" again" if k == 3 else "")))
    if k in HELPFULNESS_HUMAN:
        out.append(ev("chat", "helpfulness", None, HELPFULNESS_HUMAN[k], "HUMAN", "reviewer-1"))
    if k in HELPFULNESS_LLM:
        out.append(ev("chat", "helpfulness", None, HELPFULNESS_LLM[k], "LLM", None))
    return out


WORST = {
    # negative traces: rating ascending (no rating last), then newest first
    2: {
        "evaluations": [
            *root_evals(2),
            ev("retrieve", "retrieval_relevance", "irrelevant", 0.1, "LLM", None),
            ev("lookup_order", "tool_result", "error", 0.0, "CODE", "tool-check", "order 123 not found"),
        ],
        "child_feedback": None,
        "expected": None,
    },
    10: {
        "evaluations": None,
        "child_feedback": [{"span_name": "lookup_order", "patch": {"tool_result": "timeout"}}],
        "expected": None,
    },
    7: {
        "evaluations": [*root_evals(7), ev("retrieve", "retrieval_relevance", "irrelevant", 0.2, "LLM", None)],
        "child_feedback": None,
        "expected": "Refunds take 5 business days",
    },
    4: {
        "evaluations": [*root_evals(4), ev("lookup_order", "tool_result", "ok", 1.0, "CODE", "tool-check")],
        "child_feedback": None,
        "expected": None,
    },
}


def normalise(value: Any) -> Any:
    """JSON text inside nested results, parsed, so they compare with plain Python values."""
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: (orjson.loads(v) if k == "patch" and isinstance(v, str) else normalise(v)) for k, v in value.items()}
    return value


def test_worst_traces_say_why(data: Dataset) -> None:
    rows = q(data, "SELECT * FROM worst_traces")
    assert [trace_of(r["trace_id"]).k for r in rows] == list(WORST)
    for r in rows:
        t = trace_of(r["trace_id"])
        want = WORST[t.k]
        assert (r["input"], r["output"]) == (f"question {t.k}", f"answer {t.k}")
        assert (r["service_name"], r["model"], r["root_name"]) == (t.service, t.model, "chat")
        assert (r["user_feedback"], r["user_feedback_rating"]) == (t.feedback, t.rating)
        assert (r["user_feedback_category"], r["user_feedback_comment"]) == (t.category, t.comment)
        assert normalise(r["evaluations"]) == want["evaluations"], t.k
        assert normalise(r["child_feedback"]) == want["child_feedback"], t.k
        assert (json.loads(r["expected"]) if r["expected"] else None) == want["expected"], t.k


def test_judge_agreement_kappa_and_correlation(data: Dataset) -> None:
    rows = {r["name"]: r for r in q(data, "SELECT * FROM judge_agreement")}
    # Cohen's kappa, by its definition, over the traces both judged
    both = sorted(set(CORRECTNESS_HUMAN) & set(CORRECTNESS_LLM))
    h = [CORRECTNESS_HUMAN[k][0] for k in both]
    llm = [CORRECTNESS_LLM[k][0] for k in both]
    n = len(both)
    p_o = sum(a == b for a, b in zip(h, llm, strict=True)) / n
    p_e = sum((h.count(c) / n) * (llm.count(c) / n) for c in set(h) | set(llm))
    kappa = (p_o - p_e) / (1 - p_e)
    # by hand: 6 pairs, 4 agree (1, 2, 4, 5); human 3 correct / 3 incorrect, LLM 3 / 3 -> p_e 0.5, kappa 1/3
    assert (n, p_o, p_e) == (6, 4 / 6, 0.5) and kappa == pytest.approx(1 / 3)

    def pearson(xs: list[float], ys: list[float]) -> float:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        return cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))

    hs = [CORRECTNESS_HUMAN[k][1] for k in both]
    ls = [CORRECTNESS_LLM[k][1] for k in both]
    c = rows["correctness"]
    assert c["label_pairs"] == 6
    assert c["label_agreement"] == pytest.approx(p_o)
    assert c["cohen_kappa"] == pytest.approx(kappa)
    assert c["score_pairs"] == 6
    assert c["score_correlation"] == pytest.approx(pearson(hs, ls))
    assert c["mean_abs_score_diff"] == pytest.approx(sum(abs(a - b) for a, b in zip(hs, ls, strict=True)) / 6)

    hk = sorted(HELPFULNESS_HUMAN)
    hx, hy = [HELPFULNESS_HUMAN[k] for k in hk], [HELPFULNESS_LLM[k] for k in hk]
    helpful = rows["helpfulness"]
    assert helpful["label_pairs"] is None and helpful["cohen_kappa"] is None
    assert helpful["score_pairs"] == 3
    assert helpful["score_correlation"] == pytest.approx(pearson(hx, hy))
    # retrieval_relevance and tool_result have no human/LLM pairs
    assert set(rows) == {"correctness", "helpfulness"}


def test_review_queue_lists_what_still_needs_a_human(data: Dataset) -> None:
    rows = q(data, "SELECT * FROM review_queue")
    # 5 and 7 are "empty"; 2 was "empty" and then "filled". Ordered by last feedback time: both roots were last
    # touched by the LLM judge's run, which annotated 5 before 7.
    assert [(trace_of(r["trace_id"]).k, r["span_id"]) for r in rows] == [
        (5, BY_K[5].span_id(0)),
        (7, BY_K[7].span_id(0)),
    ]
    r7 = rows[1]
    assert (r7["input"], r7["output"], r7["user_feedback"], r7["user_feedback_comment"]) == (
        "question 7", "answer 7", "negative", "made up a refund policy")  # fmt: skip
    assert rows[0]["user_feedback_rating"] == 3 and rows[0]["service_name"] == BILLING


def test_evaluation_dataset(data: Dataset) -> None:
    rows = q(data, "SELECT * FROM evaluation_dataset")
    assert list(rows[0]) == ["trace_id", "input", "output", "expected", "feedback", "rating", "comment", "category",
                             "evaluations", "child_feedback"]  # fmt: skip
    assert [trace_of(r["trace_id"]).k for r in rows] == list(WORST)
    for r in rows:
        t = trace_of(r["trace_id"])
        assert (r["input"], r["output"], r["feedback"], r["rating"], r["comment"], r["category"]) == (
            f"question {t.k}", f"answer {t.k}", t.feedback, t.rating, t.comment, t.category)  # fmt: skip
        assert normalise(r["evaluations"]) == WORST[t.k]["evaluations"]


# -- as of -----------------------------------------------------------------------------------------


def root_as_of(data: Dataset, k: int, as_of: datetime | str, by_arrival: bool) -> dict[str, Any] | None:
    rows = q(
        data,
        "SELECT user_feedback, user_feedback_rating, user_feedback_category, user_feedback_comment, feedback_count "
        "FROM spans_as_of($t, by_arrival := $a) WHERE trace_id = $id AND parent_span_id IS NULL",
        {"t": as_of, "a": by_arrival, "id": BY_K[k].trace_id},
    )
    return rows[0] if rows else None


def fb(feedback: str | None, rating: float | None = None, category: str | None = None,
       comment: str | None = None) -> tuple[Any, ...]:  # fmt: skip
    return (feedback, rating, category, comment)


def state(row: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if row is None:
        return None
    return (
        row["user_feedback"],
        row["user_feedback_rating"],
        row["user_feedback_category"],
        row["user_feedback_comment"],
    )


def test_as_of_by_feedback_time(data: Dataset) -> None:
    cases = [
        # trace 4: the record given at 15:10 arrived last but is older than the 15:30 one
        (4, at(0, 15, 5), fb(None)),
        (4, at(0, 15, 10), fb("positive")),
        (4, at(0, 15, 20), fb("positive")),
        (4, at(0, 15, 30), fb("negative", None, "slow", "too slow")),
        # trace 3: overwritten at 16:00 (the category removed)
        (3, at(0, 15, 30), fb("negative", 2, "off-topic")),
        (3, at(0, 16, 0), fb("positive", 4)),
        # trace 6: deleted at 10:30
        (6, at(1, 10, 27), fb("positive")),
        (6, at(1, 10, 30), fb(None)),
        # trace 1 before and after its only feedback
        (1, at(0, 9, 11), fb(None)),
        (1, at(0, 9, 12), fb("positive", 5, None, "spot on")),
    ]
    for k, as_of, want in cases:
        assert state(root_as_of(data, k, as_of, False)) == want, (k, as_of)
    # the feedback log as of a feedback time: exactly the records given by then
    rows = q(data, "SELECT count(*) AS n FROM feedback_as_of($t, false)", {"t": at(0, 15, 20)})
    # by hand: 1's (9:12), 2's first (9:45), 2's tool check (9:41), 3's first (15:00), 4's older (15:10),
    # 4's tool check (14:31)
    assert rows == [{"n": 6}]
    # 'infinity' is the present: the same as the spans view
    present = q(data, "SELECT * FROM spans_as_of('infinity', by_arrival := false) ORDER BY trace_id, span_id")
    spans = q(data, "SELECT * FROM spans ORDER BY trace_id, span_id")
    assert len(present) == len(spans) == sum(4 if t.tool else 3 for t in TRACES)
    for a, b in zip(present, spans, strict=True):
        assert {**a, "attributes": json.loads(a["attributes"])} == {**b, "attributes": json.loads(b["attributes"])}


def test_as_of_by_arrival_time(data: Dataset) -> None:
    cuts = data.cuts
    # trace 4: nothing had arrived, then the newer record alone, then both (the newer still wins)
    assert state(root_as_of(data, 4, cuts["before_t4"], True)) == fb(None)
    assert state(root_as_of(data, 4, cuts["between_t4"], True)) == fb("negative", None, "slow", "too slow")
    assert state(root_as_of(data, 4, cuts["after_t4"], True)) == fb("negative", None, "slow", "too slow")
    assert root_as_of(data, 4, cuts["between_t4"], True)["feedback_count"] == 1
    assert root_as_of(data, 4, cuts["after_t4"], True)["feedback_count"] == 2
    # ... whereas by feedback time the 15:10 record was already there at 15:20
    assert state(root_as_of(data, 4, at(0, 15, 20), False)) == fb("positive")
    for name, n in (("before_t4", 0), ("between_t4", 1), ("after_t4", 2)):
        assert q(data, "SELECT count(*) AS n FROM feedback_as_of($t, true)", {"t": cuts[name]}) == [{"n": n}], name
    # trace 10's feedback had arrived before its spans: at that moment it was feedback for spans not yet stored
    t10 = {"id": BY_K[10].trace_id, "t": cuts["before_t10_spans"]}
    assert q(data, "SELECT count(*) AS n FROM feedback_as_of($t, true) WHERE trace_id = $id", t10) == [{"n": 2}]
    assert q(data, "SELECT count(*) AS n FROM spans_as_of($t, by_arrival := true) WHERE trace_id = $id", t10) == [
        {"n": 0}
    ]
    assert q(data, "SELECT count(*) AS n FROM spans_as_of($t, by_arrival := true)", {"t": t10["t"]}) == [
        {"n": sum(4 if t.tool else 3 for t in TRACES[:9])}
    ]
    assert state(root_as_of(data, 10, now(), True)) == fb("negative", 2, "incorrect")


# -- export ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["url", "db"])
@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_export_negative_cases_as_an_evaluation_dataset(
    data: Dataset, tmp_path: Path, suffix: str, source: str
) -> None:
    """Through the running server (``--url``), and from the file (shared with the server in this process)."""
    out = tmp_path / f"dataset.{suffix}"
    where = ["--url", data.server.http_url] if source == "url" else ["--db", data.server.settings.db]
    result = CliRunner().invoke(
        cli, ["export", "SELECT * FROM evaluation_dataset", "-o", str(out), *where], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {len(WORST)} rows to {out}" in result.output
    if suffix == "parquet":
        records = pq.read_table(out).to_pylist()
    else:
        records = [orjson.loads(line) for line in out.read_bytes().splitlines() if line]
    assert [trace_of(r["trace_id"]).k for r in records] == list(WORST)
    for r in records:
        assert {"input", "output", "feedback", "comment", "category", "evaluations", "expected"} <= set(r)
        t = trace_of(r["trace_id"])
        assert (r["input"], r["output"], r["feedback"], r["comment"], r["category"]) == (
            f"question {t.k}", f"answer {t.k}", t.feedback, t.comment, t.category)  # fmt: skip
        assert normalise(r["evaluations"]) == WORST[t.k]["evaluations"], (suffix, t.k)
        expected = r["expected"]
        if isinstance(expected, str) and suffix == "parquet":
            expected = json.loads(expected)
        assert expected == WORST[t.k]["expected"], (suffix, t.k)
