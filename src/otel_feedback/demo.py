"""``otel-feedback demo``: the whole product in one command.

It starts the server on the embedded default (a DuckDB file), runs a simulated customer-support agent
instrumented with the real OpenTelemetry SDK (spans over OTLP/gRPC: retrieval, an LLM call, an
order-lookup tool; some answers bad on purpose), then sends what users and judges think of the answers
through every way in - thumbs through ``PATCH``, star ratings as OpenTelemetry log events, LLM-judge
and human labels as annotations, a review flag in a batch - and prints the report.

The scenario is fixed (no randomness), so its numbers are known in advance: :func:`expected_numbers`
computes them from the same rules, and the tests check the printed report against them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from .config import Settings
from .server import PortInUse, Server

SERVICE = "support-agent"
MODELS = ("gpt-4o-mini", "claude-haiku-4")
QUESTIONS = (
    ("order_status", "Where is my order #{order}? It was supposed to arrive on Monday."),
    ("refund", "How do I get a refund for order #{order}? The blender arrived broken."),
    ("shipping", "Do you ship to Norway, and how long does it take?"),
    ("password", "I cannot log in: the password reset email never arrives."),
    ("order_status", "Has order #{order} shipped yet?"),
)
GOOD_ANSWERS = {
    "order_status": "Order #{order} left our warehouse yesterday and should arrive within 2 days.",
    "refund": "You can request a refund for order #{order} under Orders > Return; it takes 3-5 days.",
    "shipping": "Yes, we ship to Norway; delivery takes 4-6 business days.",
    "password": "Check your spam folder; if the email is not there, I have sent a new reset link.",
}
BAD_ANSWERS = {
    "order_status": "I could not find any order with that number.",
    "refund": "Refunds are not possible after 24 hours.",
    "shipping": "We only ship within the EU.",
    "password": "Please create a new account.",
}
CATEGORIES = {
    "order_status": "wrong_order_info",
    "refund": "wrong_policy",
    "shipping": "hallucination",
    "password": "unhelpful",
}


@dataclass(frozen=True)
class Conversation:
    """One user question and what happens to it (all decided by its index)."""

    index: int
    topic: str
    question: str
    model: str
    bad: bool
    tool_fails: bool
    thumbs: bool
    rating: int | None
    human_label: bool

    @property
    def uses_tool(self) -> bool:
        return self.topic in ("order_status", "refund")

    @property
    def answer(self) -> str:
        order = 1000 + self.index
        return (BAD_ANSWERS if self.bad else GOOD_ANSWERS)[self.topic].format(order=order)


def scenario(n: int = 40) -> list[Conversation]:
    """The fixed demo scenario: every fourth answer is bad; an order lookup fails in every bad order
    question; four users in five click a thumb; every third one also gives stars; the LLM judge scores
    every answer, and a person labels every third one so the judge can be checked."""
    out = []
    for i in range(n):
        topic, question = QUESTIONS[i % len(QUESTIONS)]
        bad = i % 4 == 3
        thumbs = i % 5 != 4
        rating = None
        if i % 3 == 0:
            rating = (1 if i % 2 else 2) if bad else (5 if i % 2 else 4)
        out.append(
            Conversation(
                index=i,
                topic=topic,
                question=question.format(order=1000 + i),
                model=MODELS[i % 2],
                bad=bad,
                tool_fails=bad and topic in ("order_status", "refund"),
                thumbs=thumbs,
                rating=rating,
                human_label=i % 3 == 0,
            )
        )
    return out


def judge_verdict(c: Conversation) -> str:
    """What the LLM judge says: right on every answer except every other bad one it calls correct
    (so people and the judge disagree sometimes, and the agreement numbers mean something)."""
    if c.bad and c.index % 8 == 7:
        return "correct"
    return "incorrect" if c.bad else "correct"


def sentiment(c: Conversation) -> str | None:
    """How the trace is classified by the ``traces`` view (thumbs first, else stars)."""
    if c.thumbs:
        return "negative" if c.bad else "positive"
    if c.rating is not None:
        return "positive" if c.rating >= 4 else "negative" if c.rating <= 2 else "neutral"
    return None


def expected_numbers(convs: list[Conversation]) -> dict[str, Any]:
    """The headline numbers the report must show for ``convs`` (computed from the rules, not from SQL)."""
    with_feedback = [c for c in convs if c.thumbs or c.rating is not None]
    pos = sum(sentiment(c) == "positive" for c in convs)
    neg = sum(sentiment(c) == "negative" for c in convs)
    ratings = [c.rating for c in convs if c.rating is not None]
    return {
        "traces": len(convs),
        "traces_with_feedback": len(with_feedback),
        "feedback_rate": len(with_feedback) / len(convs),
        "positive": pos,
        "negative": neg,
        "positive_rate": pos / (pos + neg) if pos + neg else None,
        "mean_rating": sum(ratings) / len(ratings) if ratings else None,
    }


# -- running it ---------------------------------------------------------------------------------------


def _start(settings: Settings, say: Callable[[str], None]) -> Server:
    try:
        return Server(settings).start()
    except PortInUse as exc:
        say(f"({exc}; using free ports instead)")
        from dataclasses import replace

        return Server(replace(settings, grpc_port=0, http_port=0)).start()


@contextmanager
def _telemetry(grpc_target: str, run_id: str) -> Iterator[tuple[Any, Any, Callable[[], None]]]:
    """A tracer and an event logger exporting over OTLP/gRPC, like any instrumented app (not global)."""
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": SERVICE, "service.version": "1.4.2", "demo.run_id": run_id})
    endpoint = f"http://{grpc_target}"
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True)))

    def flush() -> None:
        tracer_provider.force_flush(30_000)
        logger_provider.force_flush(30_000)

    try:
        yield tracer_provider.get_tracer("support-agent", "1.4.2"), logger_provider.get_logger("support-agent"), flush
    finally:
        tracer_provider.shutdown()
        logger_provider.shutdown()


def _answer(tracer: Any, c: Conversation, run_id: str) -> dict[str, str]:
    """Handle one question like a real agent would, with spans; returns its ids."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    ids: dict[str, str] = {}
    with tracer.start_as_current_span(
        "support_agent.answer",
        kind=SpanKind.SERVER,
        attributes={
            "input.value": c.question,
            "session.id": f"{run_id}-session-{c.index // 3}",
            "user.id": f"user-{c.index % 13}",
            "client_request_id": f"{run_id}-req-{c.index}",
            "openinference.span.kind": "AGENT",
        },
    ) as root:
        ids["trace_id"] = format(root.get_span_context().trace_id, "032x")
        ids["root"] = format(root.get_span_context().span_id, "016x")
        with tracer.start_as_current_span(
            "retrieve_docs", attributes={"openinference.span.kind": "RETRIEVER", "retrieval.query": c.question}
        ) as span:
            ids["retrieve"] = format(span.get_span_context().span_id, "016x")
            span.set_attribute("retrieval.documents", [f"kb/{c.topic}/{k}.md" for k in range(3)])
            span.set_attribute("retrieval.top_score", 0.41 if c.bad else 0.87)
        if c.uses_tool:
            with tracer.start_as_current_span(
                "lookup_order", attributes={"openinference.span.kind": "TOOL", "tool.name": "lookup_order"}
            ) as span:
                ids["tool"] = format(span.get_span_context().span_id, "016x")
                span.set_attribute("tool.parameters", f'{{"order_id": {1000 + c.index}}}')
                if c.tool_fails:
                    span.set_status(Status(StatusCode.ERROR, "order service timed out"))
                    span.add_event("exception", {"exception.type": "TimeoutError", "exception.message": "after 5s"})
                else:
                    span.set_attribute("tool.result", "shipped")
        prompt = (
            "You are a helpful support agent for an online shop. Answer briefly and only from the documents.\n"
            + "\n".join(f"[doc {k}] {GOOD_ANSWERS[c.topic]} (policy text, section {k})" * 3 for k in range(3))
            + f"\nUser: {c.question}"
        )
        with tracer.start_as_current_span(
            f"chat {c.model}",
            kind=SpanKind.CLIENT,
            attributes={
                "openinference.span.kind": "LLM",
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "openai" if c.model.startswith("gpt") else "anthropic",
                "gen_ai.request.model": c.model,
                "gen_ai.request.temperature": 0.2,
                "gen_ai.usage.input_tokens": len(prompt) // 4,
                "gen_ai.usage.output_tokens": len(c.answer) // 4,
                "gen_ai.prompt": prompt,
                "gen_ai.completion": c.answer,
            },
        ) as span:
            ids["llm"] = format(span.get_span_context().span_id, "016x")
        root.set_attribute("output.value", c.answer)
    return ids


def _rating_event(logger: Any, trace_id: str, span_id: str, rating: int, user: str) -> None:
    """A star rating sent the OpenTelemetry way: a ``user_feedback`` log event in the answer's context."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    ctx = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(int(trace_id, 16), int(span_id, 16), False, TraceFlags(1)))
    )
    logger.emit(
        context=ctx,
        event_name="user_feedback",
        attributes={"user_feedback_rating": rating, "user.id": user},
    )


def _check(resp: httpx.Response) -> None:
    if resp.status_code >= 300:
        raise RuntimeError(f"{resp.request.method} {resp.request.url.path} answered {resp.status_code}: {resp.text}")


def send_feedback(http: httpx.Client, logger: Any, c: Conversation, ids: dict[str, str]) -> int:
    """Everything users and judges say about conversation ``c``; returns how many records were sent."""
    sent = 0
    trace_id = ids["trace_id"]
    if c.thumbs:  # the thumbs widget: PATCH the trace (lands on its root span)
        attrs: dict[str, Any] = {"user_feedback": "negative" if c.bad else "positive"}
        if c.bad:
            attrs["user_feedback_category"] = CATEGORIES[c.topic]
            attrs["user_feedback_comment"] = f"That is not right: {c.answer}"
        _check(http.patch(f"/v1/traces/{trace_id}", json={"attributes": attrs, "id": f"thumbs-{trace_id}"}))
        sent += 1
    if c.rating is not None:  # stars, as an OpenTelemetry event from the app's backend
        _rating_event(logger, trace_id, ids["root"], c.rating, f"user-{c.index % 13}")
        sent += 1
    # an LLM judge scores every answer, the Phoenix way (span annotations on the LLM span)
    verdict = judge_verdict(c)
    annotations = [
        {
            "span_id": ids["llm"],
            "name": "correctness",
            "annotator_kind": "LLM",
            "result": {
                "label": verdict,
                "score": 1.0 if verdict == "correct" else 0.0,
                "explanation": "matches the documents" if verdict == "correct" else "contradicts the documents",
            },
            "metadata": {"judge": "gpt-4o", "prompt_version": "v3"},
        },
        {
            "span_id": ids["retrieve"],
            "name": "retrieval_relevance",
            "annotator_kind": "LLM",
            "result": {"score": 0.3 if c.bad else 0.9, "label": "irrelevant" if c.bad else "relevant"},
        },
    ]
    _check(http.post("/v1/span_annotations", json={"data": annotations}, params={"sync": "true"}))
    sent += 2
    records: list[dict[str, Any]] = []
    if c.human_label:  # a reviewer labels the same answer, so the judge can be validated
        records.append(
            {
                "trace_id": trace_id,
                "span_id": ids["llm"],
                "name": "correctness",
                "label": "incorrect" if c.bad else "correct",
                "score": 0.0 if c.bad else 1.0,
                "source": {"kind": "HUMAN", "id": "reviewer-ana"},
            }
        )
    if "tool" in ids:
        records.append(
            {
                "trace_id": trace_id,
                "span_id": ids["tool"],
                "attributes": {"tool_result": "error" if c.tool_fails else "ok"},
                "source": {"kind": "CODE", "id": "tool-checker"},
            }
        )
    if c.bad and c.thumbs:  # unhappy users' conversations wait for a person to look at them
        records.append({"trace_id": trace_id, "attributes": {"annotation_status": "empty"}})
    if records:
        _check(http.post("/v1/feedback", json={"records": records}))
        sent += len(records)
    return sent


def run(
    settings: Settings,
    *,
    conversations: int = 40,
    keep_serving: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo end to end; returns the report's data (and prints the report)."""
    from . import report

    run_id = uuid.uuid4().hex[:8]
    convs = scenario(conversations)
    started = time.time()
    server = _start(settings, say)
    try:
        say(
            f"otel-feedback demo: server up, writing {settings.db}\n"
            f"  OTLP/gRPC + FeedbackService  {server.grpc_target}\n"
            f"  OTLP/HTTP, feedback, query   {server.http_url}"
        )
        say(f"Simulating {len(convs)} support conversations ({SERVICE}, models {', '.join(MODELS)})...")
        records = 0
        with (
            _telemetry(server.grpc_target, run_id) as (tracer, logger, flush),
            httpx.Client(base_url=server.http_url, timeout=30) as http,
        ):
            # The first user clicks thumbs-down before the app has even exported the trace: feedback may
            # arrive before its span and is merged once the span lands.
            first = convs[0]
            all_ids = [_answer(tracer, c, run_id) for c in convs]
            records += send_feedback(http, logger, first, all_ids[0])
            flush()
            for c, ids in zip(convs[1:], all_ids[1:], strict=True):
                records += send_feedback(http, logger, c, ids)
            flush()
        assert server.store is not None
        store = server.store
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # log events are acknowledged by the exporter, wait for the rows
            got = store.query(
                "SELECT count(*) FROM spans WHERE resource_attributes->>'demo.run_id' = $1"
                " AND user_feedback_rating IS NOT NULL",
                [run_id],
            ).rows[0][0]
            if got >= sum(c.rating is not None for c in convs):
                break
            time.sleep(0.05)
        spans = sum(3 + c.uses_tool for c in convs)
        say(f"Sent {spans} spans and {records} feedback records. Here is the report:\n")

        def run_sql(sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
            res = store.query(sql, params)
            return [dict(zip(res.columns, row, strict=True)) for row in res.rows]

        data = report.collect(run_sql, since=_iso(started - 1), service=SERVICE)
        say(report.render_text(data))
        say(
            "Ask your own questions with SQL, e.g.\n"
            f'  otel-feedback query --db {settings.db} "SELECT * FROM worst_traces LIMIT 5"\n'
            f"  otel-feedback report --db {settings.db} --html report.html\n"
            "Views: spans, traces, feedback_summary, feedback_by_day, feedback_by_model, worst_traces, "
            "judge_agreement, review_queue, evaluation_dataset (see the README)."
        )
        if keep_serving:
            say(f'The server keeps running; query it with: otel-feedback query --url {server.http_url} "SQL"')
            server.serve_forever(announce=say)
        return data
    finally:
        server.stop()


def _iso(epoch_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S")
