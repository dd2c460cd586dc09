"""The in-process exporter end to end, with the real OpenTelemetry SDK and real DuckDB files.

The big test writes 10,000 spans through ``BatchSpanProcessor(DuckDBSpanExporter(path))`` while an
``InMemorySpanExporter`` on the same provider keeps what the SDK produced, then compares every field
of every span with what ``otel-feedback query --format json`` (the ``spans`` view) and a read-only
``Store`` (the ``span_log`` table) give back.

Subprocess tests: ``opentelemetry-instrument`` with ``OTEL_TRACES_EXPORTER=otel_feedback``, the
``configure()`` one-liner, ``kill -9`` right after ``force_flush()``, and a file locked by another
process. Every subprocess is stopped by its PID; every wait is bounded.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from otel_feedback import DuckDBSpanExporter, Store, configure
from otel_feedback.cli import cli
from otel_feedback.store import shared_store

APPS = Path(__file__).resolve().parent / "apps"
WAIT_S = 60.0
"""Upper bound of every wait on a subprocess (a failure bound, never a synchronisation)."""

N_SPANS = 10_000
SPANS_PER_TRACE = 250
SECOND_SERVICE_SPANS = 100
FIXED_START_NS = 1_700_000_000_123_456_789
"""Some spans get explicit start/end times with odd nanoseconds, to check they are kept exactly."""

KINDS = [SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER]


# -- helpers -----------------------------------------------------------------------------------------


def close_shared(path: Path) -> None:
    """Close this process's read-write store of ``path`` (the exporter keeps it open after shutdown)."""
    shared_store(path).close()


def hex_trace(ctx: SpanContext) -> str:
    return format(ctx.trace_id, "032x")


def hex_span(ctx: SpanContext) -> str:
    return format(ctx.span_id, "016x")


def expected_value(value: Any) -> Any:
    """An SDK attribute value as the store documents it: sequences become arrays, non-finite doubles
    become the strings NaN / Infinity / -Infinity, everything else keeps its type."""
    if isinstance(value, tuple | list):
        return [expected_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return value


def expected_attrs(attrs: Any) -> dict[str, Any]:
    return {k: expected_value(v) for k, v in (attrs or {}).items()}


def assert_same(actual: Any, expected: Any, where: str) -> None:
    """Equal values AND equal JSON types, recursively: an int stays an int, 3.0 stays a float, True
    stays a bool, -0.0 stays -0.0."""
    assert type(actual) is type(expected), f"{where}: {actual!r} ({type(actual).__name__}) != {expected!r}"
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for k in expected:
            assert_same(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert repr(actual) == repr(expected), f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def span_flags(parent: SpanContext | None) -> int:
    """OTLP span flags as the SDK's encoder sets them: 'has is_remote' always, 'is remote' for a
    remote parent."""
    return 0x100 | (0x200 if parent is not None and parent.is_remote else 0)


def expected_row(span: ReadableSpan) -> dict[str, Any]:
    """What the store must hold for one SDK span, by column."""
    ctx = span.get_span_context()
    status = span.status
    scope = span.instrumentation_scope
    trace_state = ",".join(f"{k}={v}" for k, v in ctx.trace_state.items()) if ctx.trace_state else ""
    assert span.start_time is not None and span.end_time is not None
    return {
        "trace_id": hex_trace(ctx),
        "span_id": hex_span(ctx),
        "parent_span_id": hex_span(span.parent) if span.parent is not None else None,
        "trace_state": trace_state or None,
        "flags": span_flags(span.parent),
        "name": span.name,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "duration_ms": (span.end_time - span.start_time) / 1e6,
        "status_code": status.status_code.name,
        "status_message": status.description or None,
        "service_name": span.resource.attributes["service.name"],
        "scope_name": scope.name,
        "scope_version": scope.version or None,
        "scope_attributes": expected_attrs(scope.attributes) if scope.attributes else None,
        "session_id": span.attributes.get("session.id"),
        "attributes": expected_attrs(span.attributes),
        "resource_attributes": expected_attrs(span.resource.attributes),
        "events": [
            {"name": e.name, "time_unix_nano": e.timestamp, "attributes": expected_attrs(e.attributes)}
            for e in span.events
        ]
        or None,
        "links": [
            {
                "trace_id": hex_trace(link.context),
                "span_id": hex_span(link.context),
                "attributes": expected_attrs(link.attributes),
                # no trace_state: the SDK's OTLP encoder (encode_spans) does not encode a link's
                # trace state, so it never reaches the store on this path
                "flags": span_flags(link.context),
            }
            for link in span.links
        ]
        or None,
        "dropped_attributes_count": span.dropped_attributes,
        "dropped_events_count": span.dropped_events,
        "dropped_links_count": span.dropped_links,
    }


def span_attributes(i: int) -> dict[str, Any]:
    """Attributes of every OpenTelemetry type, with edge values."""
    return {
        "index": i,
        "str": f"value {i}",
        "str.empty": "",
        "str.unicode": 'héllo wörld ☃ 日本語 🎉 \u0000 "quoted" \\ back',
        "bool.true": True,
        "bool.false": False,
        "int.zero": 0,
        "int.negative": -i - 1,
        "int.max": 2**63 - 1,
        "int.min": -(2**63),
        "float": i + 0.5,
        "float.integral": 3.0,
        "float.negative": -1.25,
        "float.negative_zero": -0.0,
        "float.tiny": 5e-324,
        "float.huge": 1.7976931348623157e308,
        "float.nan": math.nan,
        "float.inf": math.inf,
        "float.neg_inf": -math.inf,
        "seq.str": ("a", "", "ü ☃"),
        "seq.bool": (True, False, True),
        "seq.int": (1, -1, 0, 2**63 - 1, -(2**63)),
        "seq.float": (0.5, -2.0, 1e100, 3.0),
        "seq.empty": (),
        "session.id": f"session-{i // SPANS_PER_TRACE}",
    }


def make_trace(
    tracer: Any, first: int, count: int, links_to: list[SpanContext], remote_parent: SpanContext | None = None
) -> None:
    """``count`` spans of one trace, as a 4-ary tree (depth >= 3 from 22 spans on): span k's parent is
    span (k-1)//4. Spans start in order and end in reverse, so every child lies inside its parent."""
    open_spans: list[Any] = []
    starts: list[int | None] = []
    for k in range(count):
        i = first + k
        if k:
            ctx = set_span_in_context(open_spans[(k - 1) // 4])
        elif remote_parent is not None:
            ctx = set_span_in_context(NonRecordingSpan(remote_parent))
        else:
            ctx = None
        links = []
        if i % 7 == 0 and links_to:
            links.append(Link(links_to[-1], {"link.n": i, "link.f": 1.5, "link.seq": ("x", "y"), "link.b": False}))
        if i % 11 == 0 and remote_parent is not None:
            links.append(Link(remote_parent, {}))
        start = FIXED_START_NS + i * 1_000_003 if i % 5 == 0 else None
        span = tracer.start_span(
            f"op {i % 13}",
            context=ctx,
            kind=KINDS[i % len(KINDS)],
            attributes=span_attributes(i),
            links=links,
            start_time=start,
        )
        if i % 2 == 0:
            span.add_event(
                "step.started",
                {"k": i, "f": 0.25, "s": "ß", "b": True, "seq": (1, 2), "empty": ()},
                timestamp=(start or FIXED_START_NS) + 7,
            )
        if i % 3 == 0:
            span.add_event("exception.like", {"nan": math.nan})
            span.set_status(Status(StatusCode.ERROR, f"boom {i} ✗"))
        elif i % 3 == 1:
            span.set_status(Status(StatusCode.OK))
        open_spans.append(span)
        starts.append(start)
        links_to.append(span.get_span_context())
    for k in reversed(range(count)):
        start = starts[k]
        # explicit ends: zero duration for some, an odd number of nanoseconds for others
        end = None if start is None else start + (0 if (first + k) % 10 == 0 else 999_999_999)
        open_spans[k].end(end_time=end)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[ReadableSpan], list[Any]]]:
    path = tmp_path_factory.mktemp("exporter") / "spans.duckdb"
    memory = InMemorySpanExporter()
    exporters = []
    providers = []
    for service, scopes in (("core-test", ("scope.a", "scope.b")), ("second-service", ("scope.c",))):
        provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "t"}))
        exporter = DuckDBSpanExporter(path)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=N_SPANS, max_export_batch_size=512, schedule_delay_millis=50)
        )
        exporters.append(exporter)
        providers.append((provider, scopes))
    tracers = [
        providers[0][0].get_tracer("scope.a", "1.2.3", attributes={"scope.attr": "x", "scope.n": 7}),
        providers[0][0].get_tracer("scope.b"),
        providers[1][0].get_tracer("scope.c", "0.0.1"),
    ]
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "abc"), ("k2", "v 2")]),
    )
    links_to: list[SpanContext] = []
    made = 0
    main = N_SPANS - SECOND_SERVICE_SPANS
    trace_no = 0
    while made < main:
        count = min(SPANS_PER_TRACE, main - made)
        make_trace(tracers[trace_no % 2], made, count, links_to, remote_parent=remote if trace_no == 3 else None)
        made += count
        trace_no += 1
    make_trace(tracers[2], made, SECOND_SERVICE_SPANS, links_to)
    # one span over the SDK's default limits (128 attributes / events / links)
    over = tracers[0].start_span(
        "over limits", attributes={f"a{j}": j for j in range(130)}, links=[Link(links_to[j], {}) for j in range(130)]
    )
    for j in range(130):
        over.add_event(f"e{j}")
    over.end()
    for provider, _ in providers:
        assert provider.force_flush(60_000)
        provider.shutdown()
    close_shared(path)
    yield path, list(memory.get_finished_spans()), exporters


def test_every_span_is_exported(exported: tuple[Path, list[ReadableSpan], list[Any]]) -> None:
    path, spans, exporters = exported
    assert len(spans) == N_SPANS + 1
    assert sum(e.exported_spans for e in exporters) == N_SPANS + 1
    assert sum(e.failed_spans for e in exporters) == 0
    with Store(path, read_only=True) as store:
        assert store.query("SELECT count(*), count(DISTINCT span_id) FROM span_log").rows == [
            (N_SPANS + 1, N_SPANS + 1)
        ]
        # the data has the shape the test claims: several traces, depth >= 3, both services
        depth = store.query(
            """WITH RECURSIVE d(span_id, depth) AS (
                   SELECT span_id, 0 FROM span_log WHERE parent_span_id IS NULL
                      OR parent_span_id NOT IN (SELECT span_id FROM span_log)
                   UNION ALL
                   SELECT s.span_id, d.depth + 1 FROM span_log s JOIN d ON s.parent_span_id = d.span_id)
               SELECT max(depth) FROM d"""
        ).rows[0][0]
        assert depth >= 3
        assert store.query("SELECT count(DISTINCT trace_id) FROM span_log").rows[0][0] >= 10
        assert store.query("SELECT count(*) FROM feedback_log").rows == [(0,)]


SPANS_SQL = """
SELECT *, epoch_ns(start_time) AS start_ns, epoch_ns(end_time) AS end_ns
FROM spans ORDER BY span_id
"""


def test_spans_view_via_cli_json_matches_the_sdk_field_by_field(
    exported: tuple[Path, list[ReadableSpan], list[Any]],
) -> None:
    path, spans, _ = exported
    result = CliRunner().invoke(cli, ["query", "--db", str(path), "--format", "json", SPANS_SQL])
    assert result.exit_code == 0, result.output
    rows = {r["span_id"]: r for r in orjson.loads(result.stdout)}
    assert len(rows) == len(spans)
    view_columns = (
        "trace_id",
        "span_id",
        "parent_span_id",
        "trace_state",
        "flags",
        "name",
        "kind",
        "start_ns",
        "end_ns",
        "duration_ms",
        "status_code",
        "status_message",
        "service_name",
        "scope_name",
        "scope_version",
        "scope_attributes",
        "session_id",
        "attributes",
        "resource_attributes",
        "events",
        "links",
        "dropped_attributes_count",
        "dropped_events_count",
        "dropped_links_count",
    )
    for span in spans:
        expected = expected_row(span)
        row = rows[expected["span_id"]]
        for column in view_columns:
            assert_same(row[column], expected[column], f"spans[{expected['span_id']}].{column}")
        # the span's own attributes are kept next to the merged ones; no feedback, so both agree
        assert_same(row["span_attributes"], expected["attributes"], "span_attributes")
        assert row["feedback_count"] == 0 and row["user_feedback"] is None


def test_span_log_table_matches_the_sdk_field_by_field(
    exported: tuple[Path, list[ReadableSpan], list[Any]],
) -> None:
    path, spans, _ = exported
    with Store(path, read_only=True) as store:
        res = store.query("SELECT *, epoch_ns(start_time) AS start_ns, epoch_ns(end_time) AS end_ns FROM span_log")
        types = dict(zip(res.columns, res.types, strict=True))
    assert types["start_time"] == "TIMESTAMP_NS" and types["end_time"] == "TIMESTAMP_NS"
    json_columns = ("attributes", "resource_attributes", "scope_attributes", "events", "links")
    assert all(types[c] == "JSON" for c in json_columns)
    rows = {}
    for raw in res.rows:
        row = dict(zip(res.columns, raw, strict=True))
        for c in json_columns:
            row[c] = None if row[c] is None else orjson.loads(row[c])
        rows[row["span_id"]] = row
    for span in spans:
        expected = expected_row(span)
        row = rows[expected["span_id"]]
        for column, value in expected.items():
            assert_same(row[column], value, f"span_log[{expected['span_id']}].{column}")
        assert row["client_request_id"] is None


def test_json_types_as_duckdb_sees_them(exported: tuple[Path, list[ReadableSpan], list[Any]]) -> None:
    """DuckDB's own ``json_type`` agrees: numbers stay numbers of the right kind, arrays stay arrays."""
    path, spans, _ = exported
    span = next(s for s in spans if s.attributes.get("index") == 6)
    with Store(path, read_only=True) as store:
        res = store.query(
            "SELECT key, json_type(value) FROM span_log, json_each(attributes) WHERE span_id = $id ORDER BY key",
            {"id": hex_span(span.get_span_context())},
        )
    got = dict(res.rows)
    assert got == {
        "index": "UBIGINT",
        "str": "VARCHAR",
        "str.empty": "VARCHAR",
        "str.unicode": "VARCHAR",
        "bool.true": "BOOLEAN",
        "bool.false": "BOOLEAN",
        "int.zero": "UBIGINT",
        "int.negative": "BIGINT",
        "int.max": "UBIGINT",
        "int.min": "BIGINT",
        "float": "DOUBLE",
        "float.integral": "DOUBLE",
        "float.negative": "DOUBLE",
        "float.negative_zero": "DOUBLE",
        "float.tiny": "DOUBLE",
        "float.huge": "DOUBLE",
        "float.nan": "VARCHAR",
        "float.inf": "VARCHAR",
        "float.neg_inf": "VARCHAR",
        "seq.str": "ARRAY",
        "seq.bool": "ARRAY",
        "seq.int": "ARRAY",
        "seq.float": "ARRAY",
        "seq.empty": "ARRAY",
        "session.id": "VARCHAR",
    }


def test_times_are_exact_to_the_nanosecond(exported: tuple[Path, list[ReadableSpan], list[Any]]) -> None:
    """Spans given explicit times with odd nanoseconds (every fifth) keep them to the last digit."""
    path, spans, _ = exported
    with Store(path, read_only=True) as store:
        got = {
            r[0]: r[1:]
            for r in store.query(
                "SELECT span_id, epoch_ns(start_time), epoch_ns(end_time), duration_ms FROM span_log"
            ).rows
        }
    fixed = [s for s in spans if isinstance(s.attributes.get("index"), int) and s.attributes["index"] % 5 == 0]
    assert len(fixed) == N_SPANS // 5
    for s in fixed:
        i = s.attributes["index"]
        start = FIXED_START_NS + i * 1_000_003
        duration = 0 if i % 10 == 0 else 999_999_999
        assert got[hex_span(s.get_span_context())] == (start, start + duration, duration / 1e6)


# -- the configure() one-liner and the exporter's failure modes ---------------------------------------


def test_configure_one_liner_in_a_fresh_process(tmp_path: Path) -> None:
    path = tmp_path / "notebook.duckdb"
    proc = subprocess.run(
        [sys.executable, str(APPS / "configure_app.py"), str(path), "my-notebook"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    created = orjson.loads(proc.stdout.split("CREATED ", 1)[1])
    with Store(path, read_only=True) as store:
        res = store.query("SELECT trace_id, span_id, name, service_name, scope_name, parent_span_id FROM spans")
    got = {r[1]: r for r in res.rows}
    assert len(got) == 2
    (trace_id, cell_id, _), (_, step_id, _) = created
    assert got[cell_id] == (trace_id, cell_id, "cell", "my-notebook", "notebook", None)
    assert got[step_id] == (trace_id, step_id, "step", "my-notebook", "notebook", cell_id)


def test_configure_returns_a_provider_writing_to_the_path(tmp_path: Path) -> None:
    path = tmp_path / "configured.duckdb"
    provider = configure(path=path, service_name="in-process", set_global=False)
    with provider.get_tracer("t").start_as_current_span("one"):
        pass
    assert provider.force_flush(30_000)
    provider.shutdown()
    close_shared(path)
    with Store(path, read_only=True) as store:
        assert store.query("SELECT name, service_name FROM spans").rows == [("one", "in-process")]


def finished_spans(n: int) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "failing"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for i in range(n):
        tracer.start_span(f"s{i}").end()
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_export_after_shutdown_fails_without_raising(tmp_path: Path) -> None:
    path = tmp_path / "never.duckdb"
    exporter = DuckDBSpanExporter(path)
    exporter.shutdown()
    exporter.shutdown()  # idempotent
    spans = finished_spans(3)
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert exporter.failed_spans == 3 and exporter.exported_spans == 0
    assert exporter.force_flush() is True
    assert not path.exists()  # nothing was opened, let alone written


def test_shutdown_flushes_and_later_exports_fail(tmp_path: Path) -> None:
    path = tmp_path / "flushed.duckdb"
    exporter = DuckDBSpanExporter(path)
    assert exporter.export(finished_spans(5)) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.export(finished_spans(2)) is SpanExportResult.FAILURE
    close_shared(path)
    with Store(path, read_only=True) as store:
        assert store.query("SELECT count(*) FROM span_log").rows == [(5,)]


def test_feedback_span_event_through_the_exporter_is_merged_into_spans(tmp_path: Path) -> None:
    path = tmp_path / "fb.duckdb"
    exporter = DuckDBSpanExporter(path)
    provider = TracerProvider(resource=Resource.create({"service.name": "fb"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("answer", attributes={"answer": 42}) as span:
        span.add_event("feedback", {"user_feedback": "thumbs_up", "user_feedback_comment": "great"})
        ids = hex_trace(span.get_span_context()), hex_span(span.get_span_context())
    assert provider.force_flush(30_000)
    provider.shutdown()
    close_shared(path)
    with Store(path, read_only=True) as store:
        fb = store.query("SELECT trace_id, span_id, channel, attributes FROM feedback_log").rows
        spans = store.query("SELECT attributes, user_feedback, user_feedback_comment, feedback_count FROM spans").rows
    assert len(fb) == 1
    assert fb[0][:3] == (*ids, "span_event")
    assert orjson.loads(fb[0][3]) == {"user_feedback": "positive", "user_feedback_comment": "great"}
    attrs, thumb, comment, count = spans[0]
    assert orjson.loads(attrs) == {"answer": 42, "user_feedback": "positive", "user_feedback_comment": "great"}
    assert (thumb, comment, count) == ("positive", "great", 1)


# -- subprocesses --------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


class Child:
    """A subprocess whose stdout lines are read by a thread, so waiting for one is bounded."""

    def __init__(self, args: list[str], stderr_path: Path, env: dict[str, str] | None = None) -> None:
        self._stderr = open(stderr_path, "w")  # noqa: SIM115 - closed in stop()
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env or clean_env()
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, prefix: str, timeout_s: float = WAIT_S) -> str:
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line within {timeout_s} s; got {seen}") from None
            if line is None:
                self.proc.wait(WAIT_S)
                raise AssertionError(
                    f"exited with {self.proc.returncode} before printing {prefix!r}; stdout {seen}; "
                    f"stderr: {self.stderr_path.read_text()[-3000:]}"
                )
            if line.startswith(prefix):
                return line.rstrip("\n")
            seen.append(line)

    def stop(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        code = self.proc.wait(WAIT_S)
        self._reader.join(WAIT_S)
        self._stderr.close()
        return code


def test_instrumented_app_writes_its_spans(tmp_path: Path) -> None:
    """The zero-code path: the app uses only the OpenTelemetry API; otel-feedback is chosen by env."""
    path = tmp_path / "instrumented.duckdb"
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    env = clean_env(
        OTEL_TRACES_EXPORTER="otel_feedback",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="instrumented-service",
        OTEL_FEEDBACK_DB=str(path),
    )
    proc = subprocess.run(
        [str(instrument), sys.executable, str(APPS / "instrumented_app.py")],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    created = orjson.loads(proc.stdout.split("CREATED ", 1)[1])
    assert path.exists(), (
        "opentelemetry-instrument configured no SDK, so nothing was written; stderr: " + proc.stderr[-2000:]
    )
    with Store(path, read_only=True) as store:
        res = store.query(
            "SELECT trace_id, span_id, parent_span_id, name, service_name, scope_name, scope_version, attributes, "
            "status_code, status_message FROM spans"
        )
    rows = {r[1]: r for r in res.rows}
    assert len(rows) == len(created) == 6
    for c in created:
        trace_id, _span_id, parent, name, service, scope, version, attrs, code, message = rows[c["span_id"]]
        assert (trace_id, parent, name) == (c["trace_id"], c["parent_span_id"], c["name"])
        assert (service, scope, version) == ("instrumented-service", "instrumented-app", "0.3.1")
        assert_same(orjson.loads(attrs), c["attributes"], c["name"])
        assert [code, message] == c["status"]
    assert sum(1 for r in rows.values() if r[8] == "ERROR") == 1


def test_kill9_after_force_flush_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "kill9.duckdb"
    n = 3000
    child = Child([sys.executable, str(APPS / "kill9_exporter.py"), str(path), str(n)], tmp_path / "kill9.err")
    try:
        line = child.wait_for_line("FLUSHED ")
    finally:
        code = child.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL  # it really was killed, not a clean exit
    _, count, digest = line.split()
    assert int(count) == n
    with Store(path, read_only=True) as store:
        ids = [r[0] for r in store.query("SELECT span_id FROM span_log ORDER BY span_id").rows]
        assert store.query("SELECT count(DISTINCT trace_id), max(service_name) FROM span_log").rows == [
            (n // 50, "kill9-app")
        ]
    assert len(ids) == n
    assert hashlib.sha256("\n".join(ids).encode()).hexdigest() == digest
    # the killed process left no lock behind: the file opens read-write again
    with Store(path) as store:
        assert store.query("SELECT count(*) FROM spans").rows == [(n,)]


def test_export_to_a_file_locked_by_another_process_fails_without_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "locked.duckdb"
    holder = Child([sys.executable, str(APPS / "hold_lock.py"), str(path)], tmp_path / "holder.err")
    try:
        holder.wait_for_line("HELD ")
        exporter = DuckDBSpanExporter(path)
        with caplog.at_level(logging.WARNING, logger="otel_feedback.processor"):
            assert exporter.export(finished_spans(4)) is SpanExportResult.FAILURE
            assert exporter.export(finished_spans(4)) is SpanExportResult.FAILURE
        assert exporter.failed_spans == 8 and exporter.exported_spans == 0
        warnings = [r for r in caplog.records if r.name == "otel_feedback.processor"]
        assert len(warnings) == 1  # logged once, not once per batch
        assert "in use by another process" in warnings[0].getMessage()
    finally:
        holder.stop(signal.SIGKILL)
    # once the other process is gone, the same exporter recovers
    assert exporter.export(finished_spans(3)) is SpanExportResult.SUCCESS
    exporter.shutdown()
    close_shared(path)
    with Store(path, read_only=True) as store:
        assert store.query("SELECT count(*) FROM span_log").rows == [(3,)]


def test_batch_processor_on_a_locked_file_never_raises_into_the_app(tmp_path: Path) -> None:
    path = tmp_path / "locked2.duckdb"
    holder = Child([sys.executable, str(APPS / "hold_lock.py"), str(path)], tmp_path / "holder2.err")
    try:
        holder.wait_for_line("HELD ")
        exporter = DuckDBSpanExporter(path)
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("t")
        for i in range(10):
            with tracer.start_as_current_span(f"s{i}"):
                pass
        provider.force_flush(30_000)
        provider.shutdown()
        assert exporter.failed_spans == 10 and exporter.exported_spans == 0
    finally:
        holder.stop(signal.SIGKILL)
