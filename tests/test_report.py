"""``otel-feedback report``: a fixed dataset sent through a real server (OTLP/HTTP spans; feedback by PATCH,
batch and Phoenix annotations), then the report's numbers checked against hand-computed answers, on the
file, through ``--url``, and on a file held by a running ``serve``; the HTML page checked in headless
Chromium (rendered DOM and a screenshot's pixels).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from click.testing import CliRunner, Result
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otel_feedback import report
from otel_feedback.cli import cli
from otel_feedback.client import open_source

from .conftest import make_server, start_serve


@dataclass(frozen=True)
class T:
    """One trace of the fixed dataset and everything said about it."""

    key: int
    days_ago: float
    service: str
    model: str
    thumbs: str | None = None
    rating: int | None = None
    category: str | None = None
    comment: str | None = None
    human: tuple[str, float] | None = None  # "correctness" label and score by a person, on the root span
    judge: tuple[str, float] | None = None  # ... and by an LLM judge
    child_eval: tuple[str, str, str, float, str, str] | None = None  # span, name, label, score, kind, explanation
    review: bool = False

    @property
    def trace_id(self) -> str:
        return f"{0xABC000 + self.key:032x}"

    def span_id(self, name: str) -> str:
        return f"{self.key:04x}{['answer', 'retrieve', 'llm', 'lookup_order'].index(name):012x}"

    @property
    def sentiment(self) -> str | None:
        """The ``traces`` view's rule: thumbs first, else the rating (>= 4 positive, <= 2 negative)."""
        if self.thumbs in ("positive", "negative"):
            return self.thumbs
        if self.rating is not None:
            return "positive" if self.rating >= 4 else "negative" if self.rating <= 2 else "neutral"
        return None

    @property
    def has_feedback(self) -> bool:
        return any(x is not None for x in (self.thumbs, self.rating, self.category, self.comment))


NASTY = 'Wrong <b>order</b> & "status" \x1b[31mred'
DATA = [
    T(1, 0.2, "support", "gpt-4o", "positive", 5, human=("correct", 1.0), judge=("correct", 0.9)),
    T(
        2,
        1.2,
        "support",
        "gpt-4o",
        "negative",
        1,
        "incorrect",
        NASTY,
        human=("incorrect", 0.0),
        judge=("incorrect", 0.1),
        child_eval=("retrieve", "retrieval_relevance", "irrelevant", 0.1, "LLM", "documents about refunds, not orders"),
    ),
    T(3, 1.3, "billing", "claude", "positive", 4, human=("correct", 1.0), judge=("incorrect", 0.4)),
    T(
        4,
        2.2,
        "billing",
        "claude",
        "negative",
        2,
        "off-topic",
        "talked about the weather",
        human=("incorrect", 0.0),
        judge=("incorrect", 0.2),
        child_eval=("lookup_order", "tool_result", "error", 0.0, "CODE", "order service timed out"),
    ),
    T(5, 3.2, "support", "claude", None, 3, "slow", human=("correct", 1.0), judge=("correct", 0.8)),
    T(6, 4.2, "support", "gpt-4o", judge=("correct", 0.7), review=True),  # a judge's score is not user feedback
    T(7, 5.2, "billing", "gpt-4o", "positive"),
    T(8, 9.2, "support", "gpt-4o", "negative", 1, "incorrect", "made up a tracking number"),
    T(9, 10.2, "billing", "claude", "positive", 5),
    T(10, 0.3, "support", "gpt-4o"),
]
NOW = datetime.now(UTC).replace(microsecond=0)


def start_of(t: T) -> datetime:
    return NOW - timedelta(days=t.days_ago)


def kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def request_for(traces: list[T]) -> ExportTraceServiceRequest:
    by_service: dict[str, list[Span]] = {}
    for t in traces:
        start = int(start_of(t).timestamp() * 1e9)
        tid = bytes.fromhex(t.trace_id)
        root = bytes.fromhex(t.span_id("answer"))
        spans = [
            Span(
                trace_id=tid,
                span_id=root,
                name="answer",
                kind=2,
                start_time_unix_nano=start,
                end_time_unix_nano=start + 900_000_000,
                attributes=[kv("input.value", f"question {t.key}"), kv("output.value", f"answer {t.key}")],
            )
        ]
        for offset, name in enumerate(["retrieve", "llm"] + (["lookup_order"] if t.key == 4 else []), 1):
            attrs = [kv("gen_ai.request.model", t.model)] if name == "llm" else []
            spans.append(
                Span(
                    trace_id=tid,
                    span_id=bytes.fromhex(t.span_id(name)),
                    parent_span_id=root,
                    name=name,
                    kind=3,
                    start_time_unix_nano=start + offset * 100_000_000,
                    end_time_unix_nano=start + offset * 100_000_000 + 50_000_000,
                    attributes=attrs,
                )
            )
        by_service.setdefault(t.service, []).extend(spans)
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource=Resource(attributes=[kv("service.name", s)]), scope_spans=[ScopeSpans(spans=sp)])
            for s, sp in by_service.items()
        ]
    )


def send(url: str) -> None:
    """Spans over OTLP/HTTP protobuf; thumbs, ratings, categories and comments by PATCH; people's labels in a
    feedback batch; the judge's labels and child-span evaluations as Phoenix annotations; a review flag."""
    with httpx.Client(base_url=url, timeout=30) as http:
        # Half of the feedback arrives before its spans: the report must not care.
        for t in DATA[:5]:
            send_feedback(http, t)
        r = http.post(
            "/v1/traces",
            content=request_for(DATA).SerializeToString(),
            headers={"content-type": "application/x-protobuf"},
        )
        assert r.status_code == 200, r.text
        for t in DATA[5:]:
            send_feedback(http, t)


def send_feedback(http: httpx.Client, t: T) -> None:
    attrs = {
        k: v
        for k, v in (
            ("user_feedback", t.thumbs),
            ("user_feedback_rating", t.rating),
            ("user_feedback_category", t.category),
            ("user_feedback_comment", t.comment),
        )
        if v is not None
    }
    if attrs:
        r = http.patch(f"/v1/traces/{t.trace_id}", json={"attributes": attrs})
        assert r.status_code == 200, r.text
    if t.human:
        record = {"trace_id": t.trace_id, "name": "correctness", "label": t.human[0], "score": t.human[1]}
        r = http.post("/v1/feedback", json={"records": [{**record, "source": {"kind": "HUMAN", "id": "ann"}}]})
        assert r.status_code == 200, r.text
    if t.judge:
        item = {
            "trace_id": t.trace_id,
            "name": "correctness",
            "annotator_kind": "LLM",
            "result": {"label": t.judge[0], "score": t.judge[1]},
        }
        r = http.post("/v1/trace_annotations", json={"data": [item]})
        assert r.status_code == 200, r.text
    if t.child_eval:
        span, name, label, score, kind, why = t.child_eval
        item = {
            "span_id": t.span_id(span),
            "name": name,
            "annotator_kind": kind,
            "result": {"label": label, "score": score, "explanation": why},
        }
        r = http.post("/v1/span_annotations", json={"data": [item]})
        assert r.status_code == 200, r.text
    if t.review:
        r = http.patch(
            f"/v1/traces/{t.trace_id}/spans/{t.span_id('answer')}", json={"attributes": {"annotation_status": "empty"}}
        )
        assert r.status_code == 200, r.text


# -- the answers, computed by hand from DATA ---------------------------------------------------------


def metrics(ts: list[T]) -> dict[str, Any]:
    pos = sum(t.sentiment == "positive" for t in ts)
    neg = sum(t.sentiment == "negative" for t in ts)
    ratings = [t.rating for t in ts if t.rating is not None]
    with_fb = sum(t.has_feedback for t in ts)
    return {
        "traces": len(ts),
        "traces_with_feedback": with_fb,
        "feedback_rate": with_fb / len(ts) if ts else None,
        "positive": pos,
        "negative": neg,
        "positive_rate": pos / (pos + neg) if pos + neg else None,
        "mean_rating": sum(ratings) / len(ratings) if ratings else None,
        "ratings": len(ratings),
    }


def kappa(pairs: list[tuple[str, str]]) -> float:
    n = len(pairs)
    p_o = sum(a == b for a, b in pairs) / n
    labels = {x for p in pairs for x in p}
    p_e = sum(sum(a == k for a, _ in pairs) * sum(b == k for _, b in pairs) for k in labels) / (n * n)
    return (p_o - p_e) / (1 - p_e)


def worst_order(ts: list[T]) -> list[T]:
    bad = [t for t in ts if t.sentiment == "negative"]
    return sorted(bad, key=lambda t: (t.rating if t.rating is not None else 99, t.days_ago))


def in_scope(since_days: float | None = None, service: str | None = None) -> list[T]:
    return [
        t for t in DATA if (since_days is None or t.days_ago < since_days) and (service is None or t.service == service)
    ]


def test_the_hand_computed_answers_are_what_we_think() -> None:
    """The dataset's headline numbers, written out once, so a mistake in ``metrics`` cannot hide."""
    m = metrics(DATA)
    assert (m["traces"], m["traces_with_feedback"], m["positive"], m["negative"], m["ratings"]) == (10, 8, 4, 3, 7)
    assert m["positive_rate"] == 4 / 7
    assert m["mean_rating"] == 21 / 7
    assert [t.key for t in worst_order(DATA)] == [2, 8, 4]
    pairs = [(t.human[0], t.judge[0]) for t in DATA if t.human and t.judge]
    assert kappa(pairs) == pytest.approx((0.8 - 0.48) / 0.52)


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.duckdb"
    srv = make_server(path)
    try:
        send(srv.http_url)
    finally:
        srv.stop()
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running server with the same dataset (in its own file); its URL."""
    srv = make_server(tmp_path_factory.mktemp("report-served") / "served.duckdb")
    try:
        send(srv.http_url)
        yield srv.http_url
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_FEEDBACK_URL", "OTEL_FEEDBACK_DB", "OTEL_FEEDBACK_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(cli, ["report", *args])


def collect(where: dict[str, str], **kwargs: Any) -> report.ReportData:
    with open_source(**where) as source:
        return report.collect(source.rows, **kwargs)


# -- the numbers -------------------------------------------------------------------------------------


def check_data(data: report.ReportData, ts: list[T]) -> None:
    """Every number of ``data`` against the hand-computed answer for the traces ``ts``."""
    expected = metrics(ts)
    assert data.summary.keys() >= expected.keys()
    for key, value in expected.items():
        assert data.summary[key] == pytest.approx(value), key
    for attr, field in (("services", "service"), ("models", "model")):
        groups = sorted({getattr(t, field) for t in ts})
        rows = getattr(data, attr)
        key = "service_name" if field == "service" else "model"
        assert [r[key] for r in rows] == groups
        for r in rows:
            for k, v in metrics([t for t in ts if getattr(t, field) == r[key]]).items():
                assert r[k] == pytest.approx(v), (attr, r[key], k)
    unit = "hour" if 0 < len({start_of(t).date() for t in ts}) <= 2 else "day"
    assert data.trend_unit == unit

    def bucket(t: T) -> datetime:
        s = start_of(t).replace(tzinfo=None, minute=0, second=0)
        return s.replace(hour=0) if unit == "day" else s

    assert [r["bucket"] for r in data.trend] == sorted({bucket(t) for t in ts})
    for r in data.trend:
        for k, v in metrics([t for t in ts if bucket(t) == r["bucket"]]).items():
            assert r[k] == pytest.approx(v), (r["bucket"], k)
    cats: dict[str, list[T]] = {}
    for t in ts:
        if t.category:
            cats.setdefault(t.category, []).append(t)
    assert [(c["category"], c["traces"], c["negative"]) for c in data.categories] == sorted(
        ((k, len(v), sum(t.sentiment == "negative" for t in v)) for k, v in cats.items()), key=lambda x: (-x[1], x[0])
    )
    worst = worst_order(ts)
    assert data.worst_total == len(worst)
    assert [r["trace_id"] for r in data.worst] == [t.trace_id for t in worst]
    for r, t in zip(data.worst, worst, strict=True):
        assert (r["input"], r["output"]) == (f"question {t.key}", f"answer {t.key}")
        assert r["user_feedback_comment"] == t.comment
        names = {(e["span_name"], e["name"], e["label"], e["annotator_kind"]) for e in r["evaluations"]}
        if t.child_eval:
            span, name, label, _score, kind, _why = t.child_eval
            assert (span, name, label, kind) in names
        if t.human:
            assert ("answer", "correctness", t.human[0], "HUMAN") in names
    pairs = [t for t in ts if t.human and t.judge]
    if pairs:
        (a,) = data.agreement
        assert a["name"] == "correctness"
        assert a["label_pairs"] == len(pairs) == a["score_pairs"]
        assert a["label_agreement"] == pytest.approx(sum(t.human[0] == t.judge[0] for t in pairs) / len(pairs))
        assert a["cohen_kappa"] == pytest.approx(kappa([(t.human[0], t.judge[0]) for t in pairs]))
        hs, ls = [t.human[1] for t in pairs], [t.judge[1] for t in pairs]
        assert a["score_correlation"] == pytest.approx(statistics.correlation(hs, ls))
        assert a["mean_abs_score_diff"] == pytest.approx(
            statistics.mean(abs(h - j) for h, j in zip(hs, ls, strict=True))
        )
    else:
        assert data.agreement == []
    assert data.review_pending == sum(t.review for t in ts)


def test_all_traces_on_the_file(db: Path) -> None:
    check_data(collect({"db": str(db)}), DATA)


def test_since_and_service_on_the_file(db: Path) -> None:
    check_data(collect({"db": str(db)}, service="support"), in_scope(service="support"))
    check_data(collect({"db": str(db)}, since="7d", service="billing"), in_scope(since_days=7, service="billing"))
    iso = (NOW - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
    check_data(collect({"db": str(db)}, since=iso), in_scope(since_days=2))


def test_since_forms() -> None:
    now = datetime(2025, 6, 15, 12, 0, 0)
    assert report.parse_since("7d", now) == datetime(2025, 6, 8, 12, 0, 0)
    assert report.parse_since("24h", now) == datetime(2025, 6, 14, 12, 0, 0)
    assert report.parse_since("30m", now) == datetime(2025, 6, 15, 11, 30, 0)
    assert report.parse_since("2w", now) == datetime(2025, 6, 1, 12, 0, 0)
    assert report.parse_since("2025-06-01", now) == datetime(2025, 6, 1)
    assert report.parse_since("2025-06-01T10:00:00Z", now) == datetime(2025, 6, 1, 10)
    assert report.parse_since("2025-06-01T06:00:00-04:00", now) == datetime(2025, 6, 1, 10)
    aware = datetime(2025, 6, 1, 6, tzinfo=ZoneInfo("America/New_York"))
    assert report.parse_since(aware, now) == datetime(2025, 6, 1, 10)


def test_the_same_numbers_through_a_running_server(served: str) -> None:
    check_data(collect({"url": served}), DATA)
    check_data(collect({"url": served}, since="7d", service="support"), in_scope(since_days=7, service="support"))


def test_unscoped_numbers_are_the_views_numbers(db: Path) -> None:
    """With no scope the report runs the views' own SQL: same rows as selecting from the installed views."""
    data = collect({"db": str(db)})
    with open_source(db=str(db)) as source:
        (summary,) = source.rows("SELECT * EXCLUDE (scope) FROM feedback_summary")
        assert {k: data.summary[k] for k in summary} == pytest.approx(summary)
        for mine, theirs in (
            (data.models, source.rows("SELECT * FROM feedback_by_model")),
            (data.agreement, source.rows("SELECT * FROM judge_agreement")),
        ):
            assert len(mine) == len(theirs) > 0
            for a, b in zip(mine, theirs, strict=True):
                assert a == pytest.approx(b)  # sums of floats may differ in the last bit between runs
        assert [r["trace_id"] for r in data.worst] == [r["trace_id"] for r in source.rows("SELECT * FROM worst_traces")]


def test_an_empty_scope(db: Path) -> None:
    data = collect({"db": str(db)}, service="nobody")
    assert data.summary["traces"] == 0 and data.trend == [] and data.worst == [] and data.agreement == []
    text = report.render_text(data)
    assert "traces service nobody" in text and "  none" in text
    html = report.render_html(data)
    assert html.count(">no data</text>") == 3


def test_since_must_be_a_duration_or_a_time(db: Path) -> None:
    result = run("--db", str(db), "--since", "last tuesday")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: since: expected a duration back from now (7d, 24h, 30m, 2w) or an ISO time, got 'last tuesday'\n"
    )


# -- the terminal ------------------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def summary_line(out: str, label: str) -> str:
    m = re.search(rf"^{re.escape(label)} +(\S.*)$", out, re.M)
    assert m, f"no {label!r} line in:\n{out}"
    return m.group(1)


def table_rows(out: str, title: str) -> list[list[str]]:
    """The rows under a section title (cells split on two or more spaces), header excluded."""
    block = out.split(f"\n{title}", 1)[1].split("\n\n", 1)[0]
    lines = [ln for ln in block.splitlines()[1:] if ln.strip()]
    return [re.split(r"\s{2,}", ln.strip()) for ln in lines[1:]]


def check_text(out: str, ts: list[T]) -> None:
    m = metrics(ts)
    assert summary_line(out, "traces") == str(m["traces"])
    assert summary_line(out, "traces with feedback") == str(m["traces_with_feedback"])
    assert summary_line(out, "feedback rate") == pct(m["feedback_rate"])
    assert summary_line(out, "positive") == str(m["positive"])
    assert summary_line(out, "negative") == str(m["negative"])
    assert summary_line(out, "positive rate") == pct(m["positive_rate"])
    assert summary_line(out, "mean rating") == f"{m['mean_rating']:.2f} ({m['ratings']} ratings)"
    assert summary_line(out, "awaiting review") == str(sum(t.review for t in ts))
    services = sorted({t.service for t in ts})
    assert [r[0] for r in table_rows(out, "By service")] == services
    for row in table_rows(out, "By service"):
        g = metrics([t for t in ts if t.service == row[0]])
        assert row[1:] == [
            str(g["traces"]),
            str(g["traces_with_feedback"]),
            pct(g["feedback_rate"]),
            str(g["positive"]),
            str(g["negative"]),
            pct(g["positive_rate"]),
            "-" if g["mean_rating"] is None else f"{g['mean_rating']:.2f}",
        ]
    trend = table_rows(out, "Trend by day (UTC)")
    assert [r[0] for r in trend] == [d.isoformat() for d in sorted({start_of(t).date() for t in ts})]
    for row in trend:
        g = metrics([t for t in ts if start_of(t).date() == date.fromisoformat(row[0])])
        assert (row[1], row[6]) == (str(g["traces"]), pct(g["positive_rate"]))
    worst = worst_order(ts)
    assert f"Worst traces ({len(worst)} with negative feedback)" in out
    listed = re.findall(r"^  \d+\. ([0-9a-f]{32}) ", out, re.M)
    assert listed == [t.trace_id for t in worst]


def test_terminal_report_on_the_file(db: Path) -> None:
    result = run("--db", str(db))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    out = result.stdout
    check_text(out, DATA)
    assert out.startswith("otel-feedback report: all traces\n")
    # Why trace 2 failed: its child span's evaluation, and the person's label; the comment without its escape code.
    block = out.split(f"1. {DATA[1].trace_id}", 1)[1].split("\n  2. ", 1)[0]
    assert "category incorrect" in block.splitlines()[0]
    assert "negative, rating 1" in block.splitlines()[0]
    assert 'comment: Wrong <b>order</b> & "status" [31mred' in block
    assert "\x1b" not in out
    assert "input:   question 2" in block and "output:  answer 2" in block
    assert (
        "retrieve › retrieval_relevance: irrelevant (score 0.10) [LLM] — documents about refunds, not orders" in block
    )
    assert "answer › correctness: incorrect (score 0.00) [HUMAN]" in block
    block4 = out.split(f"3. {DATA[3].trace_id}", 1)[1]
    assert "lookup_order › tool_result: error (score 0.00) [CODE] — order service timed out" in block4
    (agreement,) = table_rows(out, "Judge agreement (people vs LLM judges on the same targets)")
    pairs = [t for t in DATA if t.human and t.judge]
    k = kappa([(t.human[0], t.judge[0]) for t in pairs])
    r = statistics.correlation([t.human[1] for t in pairs], [t.judge[1] for t in pairs])
    diff = statistics.mean(abs(t.human[1] - t.judge[1]) for t in pairs)
    assert agreement == ["correctness", "5", "80.0%", f"{k:.3f}", "5", f"{r:.3f}", f"{diff:.3f}"]
    cats = table_rows(out, "Categories")
    assert cats == [["incorrect", "2", "50.0%", "2"], ["off-topic", "1", "25.0%", "1"], ["slow", "1", "25.0%", "0"]]


def test_terminal_report_since_and_service(db: Path) -> None:
    result = run("--db", str(db), "--since", "7d", "--service", "support")
    assert result.exit_code == 0, result.output
    check_text(result.stdout, in_scope(since_days=7, service="support"))
    assert re.match(r"otel-feedback report: traces since \S+ \S+ UTC, service support\n", result.stdout)
    result = run("--db", str(db), "--service", "billing", "--worst", "0")
    assert result.exit_code == 0, result.output
    assert "Worst traces (1 with negative feedback; the first 0)" in result.stdout
    assert summary_line(result.stdout, "traces") == str(len(in_scope(service="billing")))


def test_terminal_report_through_url(served: str) -> None:
    result = run("--url", served, "--since", "7d")
    assert result.exit_code == 0, result.output
    check_text(result.stdout, in_scope(since_days=7))
    assert f"source: server {served};" in result.stdout


def test_report_on_a_file_held_by_a_running_serve(tmp_path: Path) -> None:
    held = tmp_path / "held.duckdb"
    sp = start_serve(held)
    try:
        send(sp.http_url)
        # No server known: the error says the file is held, and what to do.
        result = run("--db", str(held), env={"OTEL_FEEDBACK_HTTP_PORT": "9"})
        assert result.exit_code == 1
        assert result.stderr.startswith(f"Error: {held} is in use by another process (PID {sp.proc.pid})")
        assert "pass its URL" in result.stderr
        # The server on the (here configured) default port says it writes that file: the report asks it.
        port = sp.http_url.rsplit(":", 1)[1]
        result = run("--db", str(held), "--service", "billing", env={"OTEL_FEEDBACK_HTTP_PORT": port})
        assert result.exit_code == 0, result.output
        assert result.stderr == f"{held} is held by the running server at {sp.http_url}; asking it\n"
        check_text(result.stdout, in_scope(service="billing"))
    finally:
        assert sp.terminate() == 0


# -- the page, in a real browser ---------------------------------------------------------------------


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail(
            "chromium is not installed: the HTML report is checked in headless Chromium "
            "(apt-get install chromium; scripts/test.sh installs it)"
        )
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "HOME": str(profile)},
    )


def svg(dom: str, chart_id: str) -> str:
    m = re.search(rf'<svg class="chart" id="{chart_id}".*?</svg>', dom, re.S)
    assert m, f"no chart {chart_id} in the rendered page"
    return m.group(0)


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def count_color(path: Path, rgb: tuple[int, int, int]) -> int:
    width, bpp, rows = png_pixels(path)
    target = bytes(rgb)
    return sum(1 for row in rows for x in range(width) if row[x * bpp : x * bpp + 3] == target)


def test_html_report_renders_in_chromium_with_data_in_every_chart(db: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = run("--db", str(db), "--html", str(page))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote {page}\n"
    html = page.read_text(encoding="utf-8")
    # Self-contained: no script, nothing fetched (the only URL is the SVG namespace), a CSP forbidding both.
    assert "<script" not in html.lower()
    assert not re.search(r"\b(?:src|href)\s*=", html, re.I)
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in html

    dom_run = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert dom_run.returncode == 0, dom_run.stderr[-2000:]
    dom = dom_run.stdout
    assert "<h1>otel-feedback report</h1>" in dom

    # The x axis is time: every day from the first trace's to the last one's, days without traces included.
    first, last = min(start_of(t).date() for t in DATA), max(start_of(t).date() for t in DATA)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    assert len(days) == 11
    per_day = [metrics([t for t in DATA if start_of(t).date() == d]) for d in days]

    sat = svg(dom, "chart-satisfaction")
    got = [
        (b, float(v))
        for b, v in re.findall(r'<circle class="point"[^>]*data-bucket="([^"]+)" data-value="([^"]+)"', sat)
    ]
    want = [
        (d.isoformat(), m["positive_rate"])
        for d, m in zip(days, per_day, strict=True)
        if m["positive_rate"] is not None
    ]
    assert [b for b, _ in got] == [b for b, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6)
    assert re.search(r'<path class="line" d="M[\d.]+,[\d.]+( [ML][\d.]+,[\d.]+)*"', sat)
    axis = re.findall(r'<text class="x-label"[^>]*>([^<]+)</text>', sat)
    assert 3 <= len(axis) <= len(days)
    assert axis[0] == days[0].strftime("%b %d")
    assert set(axis) <= {d.strftime("%b %d") for d in days}

    rating = svg(dom, "chart-rating")
    got_r = [float(v) for v in re.findall(r'<circle class="point"[^>]*data-value="([^"]+)"', rating)]
    assert got_r == pytest.approx([m["mean_rating"] for m in per_day if m["mean_rating"] is not None], abs=1e-6)
    assert len(got_r) >= 4

    volume = svg(dom, "chart-volume")
    assert [int(v) for v in re.findall(r'<rect class="bar traces"[^>]*data-value="(\d+)"', volume)] == [
        m["traces"] for m in per_day
    ]
    assert [int(v) for v in re.findall(r'<rect class="bar feedback"[^>]*data-value="(\d+)"', volume)] == [
        m["traces_with_feedback"] for m in per_day
    ]
    assert re.findall(r'<rect class="bar traces"[^>]*data-bucket="([^"]+)"', volume) == [d.isoformat() for d in days]
    heights = [float(h) for h in re.findall(r'<rect class="bar traces"[^>]*height="([\d.]+)"', volume)]
    assert [h > 0 for h in heights] == [m["traces"] > 0 for m in per_day]

    table = re.search(r'<table id="worst-traces">.*?</table>', dom, re.S)
    assert table
    body_rows = re.findall(r"<tr>.*?</tr>", table.group(0).split("<tbody>", 1)[1], re.S)
    assert len(body_rows) == len(worst_order(DATA))
    assert DATA[1].trace_id in body_rows[0]
    # The comment is text, not markup: its <b> stays escaped in the DOM the browser built.
    assert 'Wrong &lt;b&gt;order&lt;/b&gt; &amp; "status"' in body_rows[0]
    assert "<b>" not in table.group(0)
    assert "retrieval_relevance: irrelevant" in body_rows[0]

    shot = tmp_path / "report.png"
    shot_run = chromium("--window-size=1280,1400", f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "profile")
    assert shot_run.returncode == 0 and shot.exists(), shot_run.stderr[-2000:]
    # The charts are painted: the satisfaction line's green, the rating line's amber, the volume bars' blue.
    assert count_color(shot, (0x16, 0xA3, 0x4A)) > 100
    assert count_color(shot, (0xD9, 0x77, 0x06)) > 100
    assert count_color(shot, (0x25, 0x63, 0xEB)) > 500


def test_html_escapes_every_user_text() -> None:
    """Service, model, category, comment, input, output, evaluation texts: all escaped, none becomes markup."""
    evil = '<img src=x onerror="alert(1)">&'
    row = {
        "trace_id": "ab" * 16,
        "start_time": datetime(2025, 1, 2, 3, 4),
        "service_name": evil,
        "model": evil,
        "input": evil,
        "output": evil,
        "user_feedback": evil,
        "user_feedback_rating": 1.0,
        "user_feedback_category": evil,
        "user_feedback_comment": evil,
        "expected": None,
        "evaluations": [{"span_name": evil, "name": evil, "label": evil, "score": 0.5, "explanation": evil}],
        "child_feedback": [{"span_name": evil, "patch": {"k": evil}}],
    }
    group = {"traces": 1, "traces_with_feedback": 1, "feedback_rate": 1.0, "positive_rate": None}
    data = report.ReportData(
        generated_at=datetime(2025, 1, 2),
        since=None,
        service=evil,
        source=evil,
        summary=metrics([]),
        categories=[{"category": evil, "traces": 1, "share": 1.0, "negative": 1}],
        services=[{"service_name": evil, **group}],
        models=[{"model": evil, **group}],
        trend=[{"bucket": datetime(2025, 1, 2), "traces": 1, "traces_with_feedback": 1, "positive_rate": 0.5}],
        worst=[row],
        worst_total=1,
        agreement=[{"name": evil, "label_pairs": 1}],
    )
    html = report.render_html(data)
    assert "<img" not in html
    assert 'onerror="' not in html
    assert html.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;") >= 12
