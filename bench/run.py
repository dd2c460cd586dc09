"""otel-feedback benchmark: one command, a real ``otel-feedback serve`` on a fresh file, a table of results.

    .venv/bin/python bench/run.py            # full run (~1 M spans, a few minutes)
    .venv/bin/python bench/run.py --quick    # small version, < 60 s

Phases (each bounded in count and in time):

1. raw OTLP/gRPC ingest: several sender *processes* send prebuilt ``ExportTraceServiceRequest`` bytes of an
   LLM-app shape (root + retrieval / LLM / tool children, 8-15 attributes, ~1-2 KB of text on LLM spans) and
   count spans whose export was acknowledged (the server answers once they are durable); p50/p99 export latency;
2. the same through the Python SDK's ``OTLPSpanExporter`` (gRPC), batches of 512 like ``BatchSpanProcessor``;
3. fill the file up to ``--spans`` (1 M) with the raw senders;
4. feedback: batch ``POST /v1/feedback`` items/s, ``PATCH`` p50/p99 one at a time, and feedback-to-visible
   latency (``PATCH`` acknowledged -> the value is in the ``spans`` view through ``POST /v1/query``);
5. queries (``feedback_by_hour``, ``worst_traces``) idle and under ~20,000 spans/s of ingest;
6. server RSS peak (``VmHWM``), CPU seconds per 1,000 spans (``utime+stime``), bytes per span on disk after
   a clean stop (which checkpoints).

Prints a table with the targets of issue 6 (a check mark per line) and writes ``bench/results/latest.json``.
The load generator runs on the same machine as the server: on 2 cores it takes CPU from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MAGIC = bytes.fromhex("feedfacebeef")
"""First 6 bytes of every trace id in a prebuilt request (then the template and the trace's index); every send
writes random trace ids over them (:class:`TraceIdSlots`), so each export is new spans with ids like an app's."""


class TraceIdSlots:
    """Where each trace's 16-byte id sits in one prebuilt request, to give every send random ones as W3C trace
    ids are. Ids that grew with each send (a counter in their first bytes, before session 9) sorted the file by
    trace id, so DuckDB's min/max per row group skipped most of the file in every lookup by trace id: at 2.6 M
    spans a ``spans`` point lookup took 27 ms with such ids and 50 ms with random ones."""

    def __init__(self, payload: bytes, traces: int, template: int) -> None:
        self.payload = payload
        self.slots = []
        for ti in range(traces):
            tid = MAGIC + struct.pack(">HQ", template, ti)
            self.slots.append([m.start() for m in re.finditer(re.escape(tid), payload)])

    def fresh(self, ids: bytes) -> bytes:
        """The request with new trace ids: 16 bytes of ``ids`` for each trace (``len(slots) * 16``), a slice per
        span."""
        buf = bytearray(self.payload)
        for i, offsets in enumerate(self.slots):
            tid = ids[16 * i : 16 * i + 16]
            for at in offsets:
                buf[at : at + 16] = tid
        return bytes(buf)


HOUR_NS = 3600 * 10**9

# -- workload: the LLM-app trace shape -----------------------------------------------------------------

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "claude-haiku-4", "llama-3.1-70b")
TOOLS = ("web_search", "calculator", "sql_query", "get_weather", "code_exec")
ROUTES = ("/v1/chat", "/v1/answer", "/api/assistant")


def make_corpus(rng: random.Random, n_words: int = 60_000) -> str:
    """English-looking text (Zipf-distributed made-up words), so compression sees what it would see in prod."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8]
    weights += [2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(5000)]
    words = rng.choices(vocab, [1.0 / (i + 1) for i in range(len(vocab))], k=n_words)
    punct = rng.choices([" "] * 8 + [", ", ". "], k=n_words)
    return "".join(w + p for w, p in zip(words, punct, strict=True))


@dataclass
class SpanSpec:
    name: str
    kind: int  # OTLP SpanKind number
    parent: int  # index of the parent in its trace, -1 for the root
    attributes: dict[str, Any]
    start_ns: int
    end_ns: int
    status: int = 0  # 0 unset, 1 ok, 2 error


@dataclass
class Workload:
    """Deterministic traces of the LLM-app shape; ``traces(n)`` gives n of them."""

    seed: int
    now_ns: int
    rng: random.Random = field(init=False)
    corpus: str = field(init=False)
    sessions: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.corpus = make_corpus(random.Random(7))
        self.sessions = [f"sess-{self.rng.getrandbits(48):012x}" for _ in range(500)]

    def text(self, lo: int, hi: int) -> str:
        n = self.rng.randint(lo, hi)
        off = self.rng.randrange(0, len(self.corpus) - n)
        return self.corpus[off : off + n]

    def trace(self) -> list[SpanSpec]:
        r = self.rng
        start = self.now_ns - r.randrange(0, 48 * HOUR_NS)  # spread over two days: ~48 hourly buckets
        model = r.choice(MODELS)
        question = self.text(60, 200)
        answer = self.text(200, 600)
        prompt, completion = r.randint(300, 3000), r.randint(50, 800)
        t = start + r.randint(1, 5) * 10**6
        spans = [
            SpanSpec(
                "chat",
                2,  # SERVER
                -1,
                {
                    "openinference.span.kind": "CHAIN",
                    "http.request.method": "POST",
                    "http.route": r.choice(ROUTES),
                    "http.response.status_code": 200,
                    "session.id": r.choice(self.sessions),
                    "user.id": f"user-{r.randrange(5000)}",
                    "client_request_id": f"req-{r.getrandbits(64):016x}",
                    "input.value": question,
                    "output.value": answer,
                },
                start,
                0,
            ),
            SpanSpec(
                "retrieve",
                1,
                0,
                {
                    "openinference.span.kind": "RETRIEVER",
                    "retrieval.query": question[:120],
                    "retrieval.top_k": 5,
                    "db.system": "pgvector",
                    "embedding.model_name": "text-embedding-3-small",
                    "retrieval.documents.0.document.id": f"doc-{r.randrange(100_000)}",
                    "retrieval.documents.0.document.score": round(r.random(), 4),
                    "retrieval.documents.1.document.id": f"doc-{r.randrange(100_000)}",
                    "retrieval.documents.1.document.score": round(r.random(), 4),
                },
                t,
                t + r.randint(5, 80) * 10**6,
            ),
        ]
        t = spans[-1].end_ns + 10**6
        llm_calls = 2 if r.random() < 0.3 else 1
        for i in range(llm_calls):
            dur = r.randint(300, 4000) * 10**6
            spans.append(
                SpanSpec(
                    "llm.chat",
                    3,  # CLIENT
                    0,
                    {
                        "openinference.span.kind": "LLM",
                        "gen_ai.system": "openai",
                        "gen_ai.request.model": model,
                        "llm.model_name": model,
                        "gen_ai.request.temperature": r.choice((0.0, 0.2, 0.7)),
                        "gen_ai.usage.input_tokens": prompt,
                        "gen_ai.usage.output_tokens": completion,
                        "llm.token_count.total": prompt + completion,
                        "input.value": self.text(700, 1400) if i == 0 else self.text(300, 700),
                        "input.mime_type": "text/plain",
                        "output.value": self.text(200, 600) if i == llm_calls - 1 else self.text(60, 200),
                        "llm.is_streaming": r.random() < 0.5,
                        "gen_ai.response.finish_reasons": "stop",
                    },
                    t,
                    t + dur,
                    2 if r.random() < 0.02 else 0,
                )
            )
            t += dur + 10**6
            if i == 0 and r.random() < 0.5:
                tool = r.choice(TOOLS)
                spans.append(
                    SpanSpec(
                        f"tool.{tool}",
                        1,
                        0,
                        {
                            "openinference.span.kind": "TOOL",
                            "tool.name": tool,
                            "tool.description": f"calls {tool}",
                            "tool.parameters": json.dumps({"q": self.text(10, 60), "limit": r.randint(1, 10)}),
                            "output.value": self.text(40, 200),
                            "gen_ai.tool.call.id": f"call_{r.getrandbits(64):016x}",
                            "gen_ai.operation.name": "execute_tool",
                            "tool.duration_ms": r.randint(1, 900),
                        },
                        t,
                        t + r.randint(1, 900) * 10**6,
                    )
                )
                t = spans[-1].end_ns + 10**6
        spans[0].end_ns = t + 10**6
        spans[0].status = 2 if any(s.status == 2 for s in spans) else 0
        return spans

    def traces(self, n: int) -> list[list[SpanSpec]]:
        return [self.trace() for _ in range(n)]


RESOURCE = {
    "service.name": "rag-assistant",
    "service.version": "1.4.2",
    "deployment.environment.name": "prod",
    "telemetry.sdk.language": "python",
    "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.version": "1.45.2",
    "host.name": "app-7f9c",
}
SCOPE = ("openinference.instrumentation.openai", "0.1.30")


def _set_value(value: Any, v: Any) -> None:
    if isinstance(v, bool):
        value.bool_value = v
    elif isinstance(v, int):
        value.int_value = v
    elif isinstance(v, float):
        value.double_value = v
    else:
        value.string_value = v


def encode_request(traces: list[list[SpanSpec]], template: int, rng: random.Random) -> bytes:
    """One ExportTraceServiceRequest; trace ids are MAGIC + template (2 bytes) + trace index (8 bytes)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in RESOURCE.items():
        kv = rs.resource.attributes.add()
        kv.key = k
        _set_value(kv.value, v)
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = SCOPE
    for ti, trace in enumerate(traces):
        tid = MAGIC + struct.pack(">HQ", template, ti)
        ids = [rng.getrandbits(64).to_bytes(8, "big") or b"\x01" * 8 for _ in trace]
        for si, s in enumerate(trace):
            span = ss.spans.add()
            span.trace_id = tid
            span.span_id = ids[si]
            if s.parent >= 0:
                span.parent_span_id = ids[s.parent]
            span.name = s.name
            span.kind = s.kind  # type: ignore[assignment]
            span.start_time_unix_nano = s.start_ns
            span.end_time_unix_nano = s.end_ns
            if s.status:
                span.status.code = s.status  # type: ignore[assignment]
            for k, v in s.attributes.items():
                kv = span.attributes.add()
                kv.key = k
                _set_value(kv.value, v)
    return req.SerializeToString()


# -- sender processes -------------------------------------------------------------------------------


@dataclass
class SenderConfig:
    kind: str  # "raw" or "sdk"
    sender_id: int  # unique per process over the whole run (goes into the trace ids)
    target: str
    seconds: float
    max_spans: int
    rate: float  # spans/s for this process, 0 = as fast as possible
    inflight: int
    traces_per_request: int
    templates: int
    now_ns: int


def _raw_sender(cfg: SenderConfig, ready: Any, go: Any, out: Any) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    rng = random.Random(cfg.sender_id)
    # trace ids seeded apart in every process: each phase's senders (same sender ids, same templates) must send
    # new traces, not the first phase's again (which the file would keep as duplicates)
    id_rng = random.Random()
    work = Workload(cfg.sender_id * 7919, cfg.now_ns)
    templates = []
    for i in range(cfg.templates):
        traces = work.traces(cfg.traces_per_request)
        slots = TraceIdSlots(encode_request(traces, i, rng), len(traces), i)
        templates.append((slots, sum(len(t) for t in traces)))
    channel = grpc.insecure_channel(
        cfg.target,
        options=[("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 64 << 20)],
    )
    export = channel.unary_unary(EXPORT_METHOD)
    grpc.channel_ready_future(channel).result(timeout=30)
    ready.put(cfg.sender_id)
    go.wait(120)
    t0 = time.time()
    cpu0 = time.process_time()  # the sender's own cost, as for the SDK sender
    deadline = t0 + cfg.seconds
    counter = itertools.count()
    lock = threading.Lock()
    done: list[tuple[float, float, int]] = []  # (end time, latency s, spans)
    stats = {"retries": 0, "errors": 0, "rejected": 0, "spans": 0, "error_text": ""}
    per_thread_rate = cfg.rate / cfg.inflight if cfg.rate else 0.0

    def loop() -> None:
        sent_spans = 0
        started = time.time()
        while time.time() < deadline:
            with lock:
                if stats["spans"] >= cfg.max_spans:
                    return
            k = next(counter)
            slots, n = templates[k % len(templates)]
            with lock:  # the generator is shared by the sender's threads; the bytes are built outside the lock
                ids = id_rng.randbytes(16 * len(slots.slots))
            payload = slots.fresh(ids)
            if per_thread_rate:
                due = started + sent_spans / per_thread_rate
                pause = due - time.time()
                if pause > 0:
                    time.sleep(min(pause, max(0.0, deadline - time.time())))
            while time.time() < deadline + 30:
                t1 = time.perf_counter()
                try:
                    raw = export(payload, timeout=60)
                except grpc.RpcError as exc:
                    code = exc.code()  # type: ignore[attr-defined]
                    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                        with lock:
                            stats["retries"] += 1
                        time.sleep(0.05)
                        continue
                    with lock:
                        stats["errors"] += 1
                        stats["error_text"] = f"{code}: {exc.details()}"  # type: ignore[attr-defined]
                    break
                latency = time.perf_counter() - t1
                rejected = ExportTraceServiceResponse.FromString(raw).partial_success.rejected_spans
                with lock:
                    done.append((time.time(), latency, n - rejected))
                    stats["spans"] += n - rejected
                    stats["rejected"] += rejected
                break
            sent_spans += n

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(cfg.inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(cfg.seconds + 120)
    cpu = time.process_time() - cpu0
    channel.close()
    out.put({"sender_id": cfg.sender_id, "t0": t0, "done": done, "cpu_s": cpu, **stats})


def _sdk_sender(cfg: SenderConfig, ready: Any, go: Any, out: Any) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    kinds = {1: SpanKind.INTERNAL, 2: SpanKind.SERVER, 3: SpanKind.CLIENT}
    statuses = {0: Status(StatusCode.UNSET), 2: Status(StatusCode.ERROR)}
    resource = Resource.create(RESOURCE)
    scope = InstrumentationScope(*SCOPE)
    rng = random.Random(cfg.sender_id)
    id_rng = random.Random()  # trace ids apart in every process (see _raw_sender)
    work = Workload(cfg.sender_id * 104729, cfg.now_ns)
    flags = TraceFlags(1)
    # Prebuilt spans; each export gives them new trace ids (a new SpanContext per span, as an app would).
    batches: list[list[tuple[ReadableSpan, int, int]]] = []  # (span, trace index, parent span id or 0)
    for _ in range(cfg.templates):
        batch: list[tuple[ReadableSpan, int, int]] = []
        while len(batch) < 512:
            trace = work.trace()
            ti = len(batch)
            ids = [rng.getrandbits(63) | 1 for _ in trace]
            for si, s in enumerate(trace):
                parent_id = ids[s.parent] if s.parent >= 0 else 0
                span = ReadableSpan(
                    name=s.name,
                    context=None,
                    attributes=s.attributes,
                    kind=kinds[s.kind],
                    status=statuses[s.status],
                    start_time=s.start_ns,
                    end_time=s.end_ns,
                    resource=resource,
                    instrumentation_scope=scope,
                )
                span._context = SpanContext(0, ids[si], False, flags)  # replaced per export
                batch.append((span, ti, parent_id))
        batches.append(batch)
    exporter = OTLPSpanExporter(endpoint=cfg.target, insecure=True, timeout=60)
    ready.put(cfg.sender_id)
    go.wait(120)
    t0 = time.time()
    cpu0 = time.process_time()  # the exporter's own cost: this process's CPU while it exports
    deadline = t0 + cfg.seconds
    done: list[tuple[float, float, int]] = []
    stats = {"retries": 0, "errors": 0, "rejected": 0, "spans": 0, "error_text": ""}
    k = 0
    while time.time() < deadline and stats["spans"] < cfg.max_spans:
        batch = batches[k % len(batches)]
        trace_ids: dict[int, int] = {}  # random, as an app's (see TraceIdSlots)
        for span, ti, parent_id in batch:
            ctx = span._context
            assert ctx is not None
            if ti not in trace_ids:
                trace_ids[ti] = id_rng.getrandbits(128) or 1
            tid = trace_ids[ti]
            span._context = SpanContext(tid, ctx.span_id, False, flags)
            span._parent = SpanContext(tid, parent_id, False, flags) if parent_id else None
        spans = [s for s, _, _ in batch]
        t1 = time.perf_counter()
        result = exporter.export(spans)
        latency = time.perf_counter() - t1
        if result is SpanExportResult.SUCCESS:
            done.append((time.time(), latency, len(spans)))
            stats["spans"] += len(spans)
        else:
            stats["errors"] += 1
        k += 1
    cpu = time.process_time() - cpu0
    exporter.shutdown()
    out.put({"sender_id": cfg.sender_id, "t0": t0, "done": done, "cpu_s": cpu, **stats})


# -- the server under test --------------------------------------------------------------------------

_LISTEN = re.compile(r"OTLP/gRPC \+ FeedbackService\s+(\S+)\n\s+OTLP/HTTP, feedback, query\s+(\S+)")


class ServeProcess:
    """``otel-feedback serve`` as a subprocess on free loopback ports."""

    def __init__(self, db: Path, log: Path, env: dict[str, str]) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        full_env.update(env)
        self.db = db
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "otel_feedback", "serve", "--db", str(db), "--grpc-port", "0", "--http-port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=full_env,
        )
        out = ""
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            out += line
            m = _LISTEN.search(out)
            if m:
                self.grpc_target, self.http_url = m.group(1), m.group(2)
                # keep draining stdout so the server can never block on a full pipe
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
        self.kill()
        raise RuntimeError(f"serve did not start:\n{out}\n{log.read_text()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """utime + stime of the server process so far (all its threads)."""
        fields_ = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields_[11]) + int(fields_[12])) / ticks

    def memory_mb(self) -> dict[str, float]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0]) / 1024
        return out

    def stop(self, timeout: float = 180) -> int | None:
        """SIGTERM (clean stop: drain, checkpoint, close), SIGKILL if it does not exit in time."""
        rc = None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            rc = self.proc.returncode
        self._log.close()
        return rc

    def summary(self) -> list[str]:
        """What the server said about its work at its clean stop (rows and commits, cache trims)."""
        lines = Path(self._log.name).read_text(errors="replace").splitlines()
        return [line for line in lines if line.startswith(("otel-feedback: wrote", "otel-feedback: DuckDB's cache"))]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(30)


# -- phases -----------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank: the smallest value with at least q % of the values at or below
    it (rank ceil(q/100 n)); NaN for no values. Until session 9 the rank was ``round(q/100 n + 0.5)``, which
    Python rounds half to even: the p99 of 100 samples (the feedback-to-visible phase) was their maximum."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s) - 1e-9) - 1))]


class Bench:
    def __init__(self, args: argparse.Namespace, server: ServeProcess) -> None:
        self.args = args
        self.server = server
        self.next_sender_id = 1
        self.now_ns = time.time_ns()
        self.acked_spans = 0
        self.cpu_spans = 0
        self.cpu_seconds = 0.0
        import httpx

        # TCP_NODELAY like browsers and Node's http client: a request written in two parts must not wait
        # for a delayed ACK (httpx leaves Nagle on, which alone adds ~40 ms to some requests)
        nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.http = httpx.Client(base_url=server.http_url, timeout=120, transport=nodelay)
        self.phase = "start"
        self.rss_by_phase: dict[str, float] = {}
        """Highest VmRSS seen in each phase (sampled every 0.2 s), MB: which phase makes the peak."""
        self._sampling = threading.Event()
        threading.Thread(target=self._sample_rss, daemon=True).start()

    def _sample_rss(self) -> None:
        while not self._sampling.wait(0.2):
            try:
                rss = self.server.memory_mb()["VmRSS"]
            except (OSError, KeyError):
                return
            self.rss_by_phase[self.phase] = max(rss, self.rss_by_phase.get(self.phase, 0.0))

    def enter(self, phase: str) -> None:
        self.phase = phase

    def stop_sampling(self) -> dict[str, float]:
        self._sampling.set()
        return {k: round(v, 1) for k, v in self.rss_by_phase.items()}

    def say(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", flush=True)

    def senders(
        self,
        kind: str,
        processes: int,
        seconds: float,
        max_spans: int,
        rate: float = 0.0,
        warmup: float = 0.0,
        during: Callable[[], Any] | None = None,
    ) -> dict[str, Any]:
        """Run sender processes; returns rate over the measured window, latency percentiles, counts."""
        a = self.args
        ctx = mp.get_context("spawn")
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = []
        for _ in range(processes):
            cfg = SenderConfig(
                kind=kind,
                sender_id=self.next_sender_id,
                target=self.server.grpc_target,
                seconds=seconds,
                max_spans=max(1, max_spans // processes),
                rate=rate / processes,
                inflight=a.inflight if kind == "raw" else 1,
                traces_per_request=a.traces_per_request,
                templates=a.templates,
                now_ns=self.now_ns,
            )
            self.next_sender_id += 1
            target = _raw_sender if kind == "raw" else _sdk_sender
            p = ctx.Process(target=target, args=(cfg, ready, go, out), daemon=True)
            p.start()
            procs.append(p)
        results: list[dict[str, Any]] = []
        try:
            for _ in procs:
                ready.get(timeout=180)
            cpu0 = self.server.cpu_seconds()
            t0 = time.time()
            go.set()
            extra = during() if during is not None else None
            for _ in procs:
                results.append(out.get(timeout=seconds + 240))
            cpu1 = self.server.cpu_seconds()
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, signal.SIGKILL)
                    p.join(10)
        done = [d for r in results for d in r["done"]]
        total = sum(r["spans"] for r in results)
        window_start = t0 + min(warmup, seconds / 2)
        window_end = min(t0 + seconds, max((d[0] for d in done), default=t0 + seconds))
        in_window = sum(n for t, _, n in done if window_start <= t <= window_end)
        span_s = window_end - window_start
        lat = [d[1] * 1000 for d in done]
        self.acked_spans += total
        self.cpu_spans += total
        self.cpu_seconds += cpu1 - cpu0
        res = {
            "spans_per_s": in_window / span_s if span_s > 0 else float("nan"),
            "spans": total,
            "exports": len(done),
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "retries": sum(r["retries"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "rejected": sum(r["rejected"] for r in results),
            "error_text": next((r["error_text"] for r in results if r["error_text"]), ""),
            "server_cpu_s": cpu1 - cpu0,
            "client_cpu_s": sum(r["cpu_s"] for r in results),
            "extra": extra,
        }
        self.say(
            f"{kind} x{processes}: {res['spans_per_s']:,.0f} spans/s, {total:,} spans, p50 {res['p50_ms']:.1f} ms, "
            f"p99 {res['p99_ms']:.1f} ms, retries {res['retries']}, errors {res['errors']} {res['error_text']}"
        )
        return res

    def query(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        r = self.http.post("/v1/query", json={"sql": sql, "params": params or {}, "max_rows": 10_000})
        elapsed = time.perf_counter() - t0
        body = r.json()
        if r.status_code != 200 or not body.get("ok"):
            raise RuntimeError(f"query failed ({r.status_code}): {body}")
        return body["rows"], elapsed

    def targets(self, n: int) -> list[tuple[str, str, str | None]]:
        """n (trace_id, span_id, parent) of stored spans, sampled."""
        rows, _ = self.query(f"SELECT trace_id, span_id, parent_span_id FROM span_log USING SAMPLE {int(n)} ROWS")
        return [tuple(r) for r in rows]  # type: ignore[misc]

    def feedback_batch(self, items: int, per_request: int) -> dict[str, Any]:
        roots = [t for t in self.targets(min(items, 200_000)) if t[2] is None] or self.targets(items)
        rng = random.Random(3)
        sent = 0
        elapsed = 0.0
        deadline = time.monotonic() + self.args.phase_timeout
        while sent < items and time.monotonic() < deadline:
            records = []
            for _ in range(min(per_request, items - sent)):
                trace_id, span_id, _ = rng.choice(roots)
                rating = rng.randint(1, 5)
                records.append(
                    {
                        "trace_id": trace_id,
                        "span_id": span_id,
                        "attributes": {
                            "user_feedback": "positive" if rating >= 4 else "negative",
                            "user_feedback_rating": rating,
                            **({"user_feedback_comment": "wrong answer"} if rating <= 2 else {}),
                        },
                    }
                )
            t0 = time.perf_counter()
            r = self.http.post("/v1/feedback", json={"records": records})
            elapsed += time.perf_counter() - t0
            r.raise_for_status()
            sent += len(records)
        res = {"items": sent, "items_per_s": sent / elapsed if elapsed else float("nan")}
        self.say(f"feedback batch: {sent:,} items, {res['items_per_s']:,.0f} items/s")
        return res

    def feedback_patch(self, n: int) -> dict[str, Any]:
        targets = self.targets(n)
        lat = []
        deadline = time.monotonic() + self.args.phase_timeout
        for i, (trace_id, _, _) in enumerate(targets):
            if time.monotonic() > deadline:
                break
            body = {"attributes": {"user_feedback": "positive" if i % 3 else "negative"}}
            t0 = time.perf_counter()
            r = self.http.patch(f"/v1/traces/{trace_id}", json=body)
            lat.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
        res = {"count": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
        self.say(f"feedback PATCH x{len(lat)}: p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms")
        return res

    def feedback_visible(self, n: int) -> dict[str, Any]:
        targets = self.targets(n)
        lat = []
        polls = []
        deadline = time.monotonic() + self.args.phase_timeout
        sql = "SELECT user_feedback_comment FROM spans WHERE trace_id = $t AND span_id = $s"
        for i, (trace_id, span_id, _) in enumerate(targets):
            if time.monotonic() > deadline:
                break
            marker = f"visible-{i}-{time.time_ns()}"
            r = self.http.patch(
                f"/v1/traces/{trace_id}/spans/{span_id}", json={"attributes": {"user_feedback_comment": marker}}
            )
            r.raise_for_status()
            acked = time.perf_counter()
            for attempt in range(1000):
                rows, _ = self.query(sql, {"t": trace_id, "s": span_id})
                if rows and rows[0][0] == marker:
                    lat.append((time.perf_counter() - acked) * 1000)
                    polls.append(attempt + 1)
                    break
                if time.perf_counter() - acked > 30:
                    break
        res = {
            "count": len(lat),
            "p50_ms": pct(lat, 50),
            "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99),
            "max_polls": max(polls, default=0),
            # the slowest samples and when they came (index), to tell a lasting slowness from a few collisions
            "slowest": sorted(((round(ms, 1), i) for i, ms in enumerate(lat)), reverse=True)[:5],
        }
        self.say(
            f"feedback visible x{len(lat)}: p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms "
            f"(queries needed: at most {res['max_polls']})"
        )
        return res

    def queries(self, reps: int) -> dict[str, Any]:
        res: dict[str, Any] = {}
        for name, sql in (
            ("feedback_by_hour", "SELECT * FROM feedback_by_hour"),
            ("worst_traces", "SELECT * FROM worst_traces LIMIT 100"),
        ):
            times = []
            rows: list[Any] = []
            for _ in range(reps):
                rows, t = self.query(sql)
                times.append(t)
            res[name] = {"median_s": statistics.median(times), "max_s": max(times), "rows": len(rows)}
            self.say(f"query {name}: median {res[name]['median_s']:.3f} s, max {max(times):.3f} s, {len(rows)} rows")
        return res


# -- the report -------------------------------------------------------------------------------------


@dataclass
class Metric:
    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


def _check(value: float, op: str, bound: float) -> bool | None:
    if value != value:  # NaN: not measured
        return False
    return value >= bound if op == ">=" else value <= bound


def metrics_from(r: dict[str, Any]) -> list[Metric]:
    m: list[Metric] = []

    def add(name: str, value: float, unit: str, op: str = "", bound: float = 0.0, note: str = "") -> None:
        target = f"{op} {bound:,g}" if op else ""
        m.append(Metric(name, float(value), unit, target, _check(float(value), op, bound) if op else None, note))

    raw, sdk = r["ingest_raw"], r["ingest_sdk"]
    ack = "ack after journal fsync" if r.get("journal", True) else "ack after DuckDB commit"
    add("ingest_raw_spans_per_s", raw["spans_per_s"], "spans/s", ">=", 50_000, ack)
    add("ingest_raw_export_p50_ms", raw["p50_ms"], "ms", note=f"{r['args']['traces_per_request']} traces/request")
    add("ingest_raw_export_p99_ms", raw["p99_ms"], "ms")
    add("ingest_sdk_spans_per_s", sdk["spans_per_s"], "spans/s", ">=", 50_000, "OTLPSpanExporter, 512/batch")
    add("ingest_sdk_export_p50_ms", sdk["p50_ms"], "ms")
    add("ingest_sdk_export_p99_ms", sdk["p99_ms"], "ms")
    # What the SDK line costs on this machine, client and server together: above the cores there are (2 here), 50 k
    # spans/s cannot be reached through the Python exporter however fast the server is.
    sdk_client = 1000 * sdk["client_cpu_s"] / max(1, sdk["spans"])
    sdk_server = 1000 * sdk["server_cpu_s"] / max(1, sdk["spans"])
    add("ingest_sdk_client_cpu_s_per_1000_spans", sdk_client, "s", note="the SDK senders' own CPU (encoding, gRPC)")
    add("ingest_sdk_cores_at_50k", 50 * (sdk_client + sdk_server), "cores", note="(client + server CPU) x 50 k/s")
    add("feedback_patch_p50_ms", r["patch"]["p50_ms"], "ms")
    add("feedback_patch_p99_ms", r["patch"]["p99_ms"], "ms", "<=", 5)
    add("feedback_batch_items_per_s", r["batch"]["items_per_s"], "items/s", ">=", 20_000)
    add("feedback_visible_p50_ms", r["visible"]["p50_ms"], "ms")
    add("feedback_visible_p99_ms", r["visible"]["p99_ms"], "ms", "<=", 50, "ack -> in spans via /v1/query")
    n = f"over {r['spans_at_queries']:,} spans"
    add("query_feedback_by_hour_idle_s", r["queries_idle"]["feedback_by_hour"]["median_s"], "s", "<=", 0.5, n)
    add("query_worst_traces_idle_s", r["queries_idle"]["worst_traces"]["median_s"], "s", "<=", 1.0, n)
    ql = r["queries_load"]
    add("query_feedback_by_hour_load_s", ql["feedback_by_hour"]["median_s"], "s", "<=", 0.5, "under ingest load")
    add("query_worst_traces_load_s", ql["worst_traces"]["median_s"], "s", "<=", 1.0, "under ingest load")
    add("ingest_during_queries_spans_per_s", r["ingest_load"]["spans_per_s"], "spans/s", note="asked ~20,000")
    add("rss_peak_ingest_mb", r["rss_ingest_mb"], "MB", "<=", 300, "VmHWM after the ingest phases")
    add("rss_peak_mb", r["rss_peak_mb"], "MB", "<=", 300, "VmHWM at the end (queries included)")
    add("bytes_per_span", r["bytes_per_span"], "B", "<=", 300, "file after clean stop / spans")
    add("cpu_s_per_1000_spans", r["cpu_s_per_1000_spans"], "s", note="server utime+stime over ingest phases")
    add("spans_stored", r["spans_stored"], "spans", note=f"acknowledged {r['spans_acked']:,}")
    return m


def table(metrics: list[Metric]) -> str:
    lines = [f"{'metric':36} {'value':>14} {'unit':8} {'target':>10}   note", "-" * 100]
    for x in metrics:
        v = f"{x.value:,.0f}" if abs(x.value) >= 100 else f"{x.value:,.3g}" if x.value == x.value else "n/a"
        mark = {True: "✓", False: "✗", None: " "}[x.ok]
        lines.append(f"{x.name:36} {v:>14} {x.unit:8} {x.target:>10} {mark} {x.note}")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------


def _journal_on(env: dict[str, str]) -> bool:
    """Whether the server acknowledges from its journal, as it reads its environment (``OTEL_FEEDBACK_JOURNAL``)."""
    from otel_feedback.config import Settings

    return Settings.load(env=env).journal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small version (< 60 s)")
    ap.add_argument("--spans", type=int, default=None, help="spans in the file before the queries (1,000,000)")
    ap.add_argument("--seconds", type=float, default=None, help="length of each ingest phase (20; quick 4)")
    ap.add_argument("--senders", type=int, default=3, help="raw gRPC sender processes (3)")
    ap.add_argument("--inflight", type=int, default=2, help="concurrent exports per raw sender process (2)")
    ap.add_argument("--sdk-senders", type=int, default=2, help="SDK exporter processes (2)")
    ap.add_argument("--traces-per-request", type=int, default=100, help="traces per raw export (~4.8 spans each)")
    ap.add_argument("--templates", type=int, default=4, help="distinct prebuilt requests per sender")
    ap.add_argument("--patches", type=int, default=0, help="PATCH requests timed one at a time (1000; quick 50)")
    ap.add_argument("--batch-items", type=int, default=0, help="feedback items sent in batches of 1000 (50,000)")
    ap.add_argument("--visible", type=int, default=0, help="feedback-to-visible samples (100; quick 10)")
    ap.add_argument("--load-rate", type=float, default=20_000, help="spans/s of ingest while querying (20,000)")
    ap.add_argument("--phase-timeout", type=float, default=120, help="time cap of each feedback phase, s")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra env for the server")
    ap.add_argument("--out", default=str(RESULTS / "latest.json"), help="where to write the JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (database and server log)")
    args = ap.parse_args(argv)
    q = args.quick
    args.spans = args.spans if args.spans is not None else (30_000 if q else 1_000_000)
    args.seconds = args.seconds if args.seconds is not None else (4.0 if q else 20.0)
    args.patches = args.patches or (50 if q else 1000)
    args.batch_items = args.batch_items or (2_000 if q else 50_000)
    args.visible = args.visible or (10 if q else 100)
    args.reps = 1 if q else 3
    if q:
        args.templates = min(args.templates, 2)
        args.traces_per_request = min(args.traces_per_request, 50)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="otel-feedback-bench-"))
    env = {"OTEL_FEEDBACK_QUERY_TIMEOUT_MS": "300000"}
    env.update(dict(kv.split("=", 1) for kv in args.env))
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "quick" if args.quick else "full",
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "server_env": env,
    }
    try:
        import duckdb

        from otel_feedback import __version__

        meta["otel_feedback"] = __version__
        meta["duckdb"] = duckdb.__version__
    except ImportError:
        pass
    server = ServeProcess(tmp / "bench.duckdb", tmp / "serve.log", env)
    r: dict[str, Any] = {"args": vars(args), "journal": _journal_on(env)}
    try:
        b = Bench(args, server)
        b.say(f"serve pid {server.pid}: gRPC {server.grpc_target}, HTTP {server.http_url}, file {server.db}")
        s = args.seconds
        b.enter("ingest_raw")
        r["ingest_raw"] = b.senders("raw", args.senders, s, 10**9, warmup=min(2.0, s / 4))
        b.enter("ingest_sdk")
        r["ingest_sdk"] = b.senders("sdk", args.sdk_senders, s * 0.75, 10**9, warmup=min(2.0, s / 4))
        missing = args.spans - b.acked_spans
        if missing > 0:
            b.enter("fill")
            r["fill"] = b.senders("raw", args.senders, max(s, 300.0), missing)
        r["rss_ingest_mb"] = server.memory_mb()["VmHWM"]
        r["cpu_s_per_1000_spans"] = 1000 * b.cpu_seconds / max(1, b.cpu_spans)
        b.enter("feedback")
        r["batch"] = b.feedback_batch(args.batch_items, 1000)
        r["patch"] = b.feedback_patch(args.patches)
        r["visible"] = b.feedback_visible(args.visible)
        rows, _ = b.query("SELECT count(*) FROM span_log")
        r["spans_at_queries"] = rows[0][0]
        b.enter("queries_idle")
        r["queries_idle"] = b.queries(args.reps)
        b.enter("queries_load")
        load_seconds = max(s, 60.0 if not args.quick else s)
        r["ingest_load"] = b.senders(
            "raw", 2, load_seconds, 10**9, rate=args.load_rate, warmup=1.0, during=lambda: b.queries(args.reps)
        )
        r["queries_load"] = r["ingest_load"].pop("extra")
        rows, _ = b.query("SELECT count(*) FROM span_log")
        r["spans_stored"] = rows[0][0]
        r["spans_acked"] = b.acked_spans
        mem = server.memory_mb()
        r["rss_peak_mb"] = mem["VmHWM"]
        r["rss_by_phase_mb"] = b.stop_sampling()
        b.say("VmRSS peak by phase, MB: " + ", ".join(f"{k} {v:,.0f}" for k, v in r["rss_by_phase_mb"].items()))
        b.http.close()
        b.say("stopping the server (clean stop: checkpoint)")
        r["server_exit"] = server.stop()
        r["server_summary"] = server.summary()
        size = sum(p.stat().st_size for p in tmp.glob("bench.duckdb*"))
        r["file_bytes"] = size
        r["bytes_per_span"] = size / max(1, r["spans_stored"])
    finally:
        server.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    meta["seconds"] = round(time.time() - started, 1)
    metrics = metrics_from(r)
    print()
    print(table(metrics))
    print(
        f"\nload average start {' '.join(meta['loadavg_start'])}, end {' '.join(meta['loadavg_end'])}; "
        f"{meta['seconds']} s in all"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": meta,
        "metrics": {
            x.name: {"value": x.value, "unit": x.unit, "target": x.target, "ok": x.ok, "note": x.note} for x in metrics
        },
        "raw": r,
    }
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
