"""``kill -9`` after a feedback request was acknowledged loses nothing.

A real ``otel-feedback serve`` process gets spans, then a stream of feedback from two threads: one
over HTTP (``PATCH`` on a span, ``PATCH`` on a trace, ``POST /v1/feedback`` batches), one over gRPC
(``FeedbackService/Patch`` through :class:`otel_feedback.FeedbackClient`, ``BatchPatch`` through the
stub). Every record sets its own attribute key, so each one's effect on ``spans`` is visible alone.
Mid-stream the server is killed with SIGKILL; restarted on the same file, every acknowledged record
must be in ``feedback_log`` and merged into its span in ``spans``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

import otel_feedback
from otel_feedback._pb import feedback_pb2
from otel_feedback.client import query_server

from .conftest import ServeProcess, start_serve

TRACES = 8
MAX_REQUESTS_PER_THREAD = 2000  # bounds: whichever comes first, this or the deadline
STREAM_DEADLINE_S = 60.0
KILL_AFTER_ACKS = 150


@dataclass
class Acked:
    """Records whose request was answered with success: id -> (trace, span, key, value)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    records: dict[str, tuple[str, str, str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    cut_off: list[str] = field(default_factory=list)  # streams that ended because the server died

    def add(self, items: list[tuple[str, str, str, str, int]]) -> None:
        with self.lock:
            for fid, trace_id, span_id, key, value in items:
                self.records[fid] = (trace_id, span_id, key, value)

    def __len__(self) -> int:
        with self.lock:
            return len(self.records)


def _drain(sp: ServeProcess) -> None:
    """Keep reading the server's output so a full pipe can never stall it."""
    out = sp.proc.stdout
    assert out is not None

    def pump() -> None:
        for _ in out:
            pass

    threading.Thread(target=pump, daemon=True).start()


def _send_spans(url: str, spans: dict[str, list[str]]) -> None:
    out = []
    for trace_id, span_ids in spans.items():
        for i, span_id in enumerate(span_ids):
            out.append(
                Span(
                    trace_id=bytes.fromhex(trace_id),
                    span_id=bytes.fromhex(span_id),
                    parent_span_id=b"" if i == 0 else bytes.fromhex(span_ids[0]),
                    name="answer" if i == 0 else "step",
                    start_time_unix_nano=1_700_000_000_000_000_000 + i,
                    end_time_unix_nano=1_700_000_000_500_000_000 + i,
                    attributes=[KeyValue(key="input.value", value=AnyValue(string_value=f"q-{trace_id[:6]}"))],
                )
            )
    req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=out)])])
    r = httpx.post(
        url + "/v1/traces", content=req.SerializeToString(), headers={"content-type": "application/x-protobuf"}
    )
    assert r.status_code == 200, r.text


def _turns(spans: dict[str, list[str]], stop: threading.Event) -> Iterator[tuple[int, str, str, str]]:
    """(n, trace id, root span id, child span id) for each request a stream sends, cycling over the traces,
    bounded in count and time, until ``stop``."""
    traces = list(spans)
    deadline = time.monotonic() + STREAM_DEADLINE_S
    for n in range(MAX_REQUESTS_PER_THREAD):
        if stop.is_set() or time.monotonic() > deadline:
            return
        trace_id = traces[n % len(traces)]
        root, child = spans[trace_id]
        yield n, trace_id, root, child


def _http_stream(url: str, spans: dict[str, list[str]], acked: Acked, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        for n, trace_id, root, child in _turns(spans, stop):
            try:
                if n % 3 == 0:  # PATCH a span
                    fid, key = f"h-{n}", f"h_{n}"
                    r = http.patch(
                        f"/v1/traces/{trace_id}/spans/{child}",
                        json={"id": fid, "attributes": {key: n}},
                        headers={"content-type": "application/merge-patch+json"},
                    )
                    if r.status_code == 200:
                        assert r.json()["id"] == fid
                        acked.add([(fid, trace_id, child, key, n)])
                elif n % 3 == 1:  # PATCH a trace: lands on its root span
                    fid, key = f"h-{n}", f"h_{n}"
                    r = http.patch(f"/v1/traces/{trace_id}", json={"id": fid, "attributes": {key: n}})
                    if r.status_code == 200:
                        acked.add([(fid, trace_id, root, key, n)])
                else:  # a batch of five
                    items = [
                        (f"h-{n}-{j}", trace_id, child if j % 2 else root, f"h_{n}_{j}", n * 10 + j) for j in range(5)
                    ]
                    r = http.post(
                        "/v1/feedback",
                        json={
                            "records": [
                                {"id": fid, "trace_id": t, "span_id": s, "attributes": {k: v}}
                                for fid, t, s, k, v in items
                            ]
                        },
                    )
                    if r.status_code == 200:
                        assert r.json()["ids"] == [it[0] for it in items]
                        acked.add(items)
                if r.status_code != 200 and r.status_code != 503:
                    acked.errors.append(f"http {r.status_code}: {r.text}")
                    return
            except httpx.HTTPError:  # the server is gone
                acked.cut_off.append("http")
                return


def _grpc_stream(url: str, target: str, spans: dict[str, list[str]], acked: Acked, stop: threading.Event) -> None:
    client = otel_feedback.FeedbackClient(url, transport="grpc", grpc_target=target, retries=0, raise_errors=True)
    with grpc.insecure_channel(target) as channel:
        batch = channel.unary_unary(
            "/otel_feedback.v1.FeedbackService/BatchPatch",
            request_serializer=feedback_pb2.BatchPatchRequest.SerializeToString,
            response_deserializer=feedback_pb2.BatchPatchResponse.FromString,
        )
        try:
            for n, trace_id, root, child in _turns(spans, stop):
                try:
                    if n % 2 == 0:
                        fid, key = f"g-{n}", f"g_{n}"
                        assert client.send(trace_id, root, id=fid, attributes={key: n}) == fid
                        acked.add([(fid, trace_id, root, key, n)])
                    else:
                        items = [(f"g-{n}-{j}", trace_id, child, f"g_{n}_{j}", n * 10 + j) for j in range(4)]
                        req = feedback_pb2.BatchPatchRequest(
                            patches=[
                                feedback_pb2.PatchRequest(
                                    id=fid,
                                    target=feedback_pb2.Target(trace_id=bytes.fromhex(t), span_id=bytes.fromhex(s)),
                                    attributes=[KeyValue(key=k, value=AnyValue(int_value=v))],
                                )
                                for fid, t, s, k, v in items
                            ]
                        )
                        assert list(batch(req, timeout=10).ids) == [it[0] for it in items]
                        acked.add(items)
                except (grpc.RpcError, otel_feedback.OtelFeedbackError):  # the server is gone
                    acked.cut_off.append("grpc")
                    return
        finally:
            client.close()


def test_kill9_mid_stream_loses_no_acknowledged_feedback(tmp_path: Path) -> None:
    db = tmp_path / "durable.duckdb"
    spans = {f"{i + 1:032x}": [f"{i + 1:015x}a", f"{i + 1:015x}b"] for i in range(TRACES)}
    sp = start_serve(db)
    try:
        _drain(sp)
        _send_spans(sp.http_url, spans)
        acked, stop = Acked(), threading.Event()
        workers = [
            threading.Thread(target=_http_stream, args=(sp.http_url, spans, acked, stop)),
            threading.Thread(target=_grpc_stream, args=(sp.http_url, sp.grpc_target, spans, acked, stop)),
        ]
        for w in workers:
            w.start()
        deadline = time.monotonic() + STREAM_DEADLINE_S
        while len(acked) < KILL_AFTER_ACKS and time.monotonic() < deadline and any(w.is_alive() for w in workers):
            time.sleep(0.05)
        before_kill = len(acked)
        sp.kill9()  # mid-stream: both threads have requests in flight
        for w in workers:
            w.join(30)
        stop.set()
        assert not any(w.is_alive() for w in workers)
    finally:
        if sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait(30)
    assert not acked.errors, acked.errors[:3]
    assert before_kill >= KILL_AFTER_ACKS, f"only {before_kill} records acknowledged before the deadline"
    assert sorted(acked.cut_off) == ["grpc", "http"], "both streams were still sending when the server died"
    records = dict(acked.records)

    again = start_serve(db)
    try:
        _drain(again)
        ids = sorted(records)
        stored = query_server(
            again.http_url,
            "SELECT feedback_id FROM feedback_log WHERE feedback_id IN (SELECT unnest($ids::VARCHAR[]))",
            {"ids": ids},
            max_rows=100_000,
        )
        missing = set(ids) - {r[0] for r in stored.rows}
        assert not missing, f"{len(missing)} of {len(ids)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
        merged = query_server(
            again.http_url, "SELECT span_id, attributes FROM spans ORDER BY span_id", max_rows=100_000
        )
        attrs = {span_id: a if isinstance(a, dict) else json.loads(a) for span_id, a in merged.rows}
        assert len(attrs) == 2 * TRACES
        wrong = [
            (fid, key, value, attrs[span_id].get(key))
            for fid, (_, span_id, key, value) in records.items()
            if attrs[span_id].get(key) != value
        ]
        assert not wrong, f"{len(wrong)} acknowledged records not merged into spans, e.g. {wrong[:5]}"
        total = query_server(again.http_url, "SELECT count(DISTINCT feedback_id) FROM feedback_log").rows[0][0]
        assert total >= len(records)
        # the server still takes feedback on the recovered file
        with httpx.Client(base_url=again.http_url, timeout=10) as http:
            trace_id = next(iter(spans))
            r = http.patch(f"/v1/traces/{trace_id}", json={"attributes": {"after_restart": True}})
            assert r.status_code == 200, r.text
        assert again.terminate() == 0
    finally:
        if again.proc.poll() is None:
            again.proc.kill()
            again.proc.wait(30)
    print(
        f"acknowledged before kill -9: {len(records)} records, all present after restart "
        f"(+{total - len(records)} committed whose answer the kill cut off)"
    )
