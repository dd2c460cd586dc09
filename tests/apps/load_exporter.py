"""A load client: sends prebuilt OTLP trace requests over gRPC (or OTLP/HTTP protobuf) and records acks.

Usage::

    python load_exporter.py --client 3 --batches 100 --spans 500 --acks acks.txt \\
        (--grpc 127.0.0.1:4317 | --http http://127.0.0.1:4318) [--threads 2] [--deadline 60] [--give-up 20]

Batch ``b`` of client ``c`` is one request holding one trace: trace id = ``c`` (4 bytes) + ``b`` (4 bytes) +
8 fixed bytes, with ``--spans`` spans whose span ids are ``i + 1`` (span 1 is the root of the others). So the test can count, per
trace id, how many times a batch was stored.

A batch's index is appended to ``--acks`` (flushed and fsynced) only after the server answered OK (gRPC) or
200 (HTTP) with no rejected spans. Retryable answers (the gRPC codes OTLP calls retryable: UNAVAILABLE, RESOURCE_EXHAUSTED, CANCELLED, ...;
HTTP 429 / 503, connection errors) are retried with exponential backoff and jitter; anything else is a
permanent failure of that batch (counted, not retried). ``--give-up`` ends the run when nothing was
acknowledged for that many seconds (the server is gone for good); ``--deadline`` caps the whole run.

At the end one JSON line goes to stdout: acked batches, answers seen per code, how many retryable answers
carried a retry hint (gRPC ``RetryInfo`` in ``grpc-status-details-bin`` and ``google.rpc.retryinfo-bin``;
HTTP ``Retry-After``), the largest hint seen, and the elapsed time. Exit status: 0 all batches acked,
1 a permanent failure, 3 gave up or ran out of time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import threading
import time
from typing import Any

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TRACE_SUFFIX = bytes.fromhex("a1b2c3d4e5f60718")
MARKER = bytes.fromhex("f00dfeedf00dfeedf00dfeedf00dfeed")
# The codes OTLP/gRPC says a client may retry (CANCELLED is what a request queued in a stopping server gets).
RETRYABLE_GRPC = {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
RETRYABLE_HTTP = {429, 502, 503, 504}


def trace_id(client: int, batch: int) -> bytes:
    return client.to_bytes(4, "big") + batch.to_bytes(4, "big") + TRACE_SUFFIX


def build_template(client: int, spans: int) -> bytes:
    """One serialized request whose trace id is ``MARKER``; batches differ only in that id, so each is a
    byte replace away (building 50,000 spans with protobuf per process would take seconds)."""
    base = 1_700_000_000_000_000_000
    out = []
    for i in range(spans):
        out.append(
            Span(
                trace_id=MARKER,
                span_id=(i + 1).to_bytes(8, "big"),
                parent_span_id=b"" if i == 0 else (1).to_bytes(8, "big"),
                name="load-root" if i == 0 else "load-child",
                kind=Span.SPAN_KIND_SERVER if i == 0 else Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=base + i,
                end_time_unix_nano=base + i + 1000,
                attributes=[
                    KeyValue(key="load.client", value=AnyValue(int_value=client)),
                    KeyValue(key="load.index", value=AnyValue(int_value=i)),
                    KeyValue(key="load.text", value=AnyValue(string_value=f"span {i} of {spans}")),
                    KeyValue(key="load.ratio", value=AnyValue(double_value=i / spans)),
                    KeyValue(key="load.flag", value=AnyValue(bool_value=i % 2 == 0)),
                ],
                status=Status(code=Status.STATUS_CODE_OK),
            )
        )
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="load"))]),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="load_exporter"), spans=out)],
            )
        ]
    )
    raw = request.SerializeToString()
    assert raw.count(MARKER) == spans
    return raw


def grpc_retry_hint(err: grpc.RpcError) -> float | None:
    """Seconds of the RetryInfo the server sent, if it sent it in both trailers (else None)."""
    metadata = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    details, legacy = metadata.get("grpc-status-details-bin"), metadata.get("google.rpc.retryinfo-bin")
    if details is None or legacy is None:
        return None
    hints = []
    for detail in status_pb2.Status.FromString(details).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            hints.append(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    if not hints:
        return None
    legacy_info = error_details_pb2.RetryInfo.FromString(legacy)
    return max(hints[0], legacy_info.retry_delay.seconds + legacy_info.retry_delay.nanos / 1e9)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pending: collections.deque[int] = collections.deque(range(args.batches))
        self.lock = threading.Lock()
        self.codes: collections.Counter[str] = collections.Counter()
        self.hinted = 0
        self.unhinted = 0
        self.unhinted_details: list[str] = []
        self.max_hint = 0.0
        self.acked = 0
        self.failed = 0
        self.last_ack = time.monotonic()
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.gave_up = False
        self.acks = open(args.acks, "a", encoding="ascii")  # noqa: SIM115 - closed in main
        template = build_template(args.client, args.spans)
        self.requests = [template.replace(MARKER, trace_id(args.client, b)) for b in range(args.batches)]

    def ack(self, batch: int) -> None:
        with self.lock:
            self.acks.write(f"{batch}\n")
            self.acks.flush()
            os.fsync(self.acks.fileno())
            self.acked += 1
            self.last_ack = time.monotonic()
            self.codes["OK"] += 1

    def note(self, code: str, hint: float | None, retryable: bool, details: str | None = None) -> None:
        with self.lock:
            self.codes[code] += 1
            if retryable and hint is not None:
                self.hinted += 1
                self.max_hint = max(self.max_hint, hint)
            elif retryable:
                self.unhinted += 1
                if len(self.unhinted_details) < 20:
                    self.unhinted_details.append(str(details or ""))

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self.started > self.args.deadline or now - self.last_ack > self.args.give_up:
            self.gave_up = True
            self.stop.set()
        return self.stop.is_set()

    def next_batch(self) -> int | None:
        with self.lock:
            return self.pending.popleft() if self.pending else None

    def send_one(self, batch: int, send: Any) -> None:
        """Send ``batch`` until it is acked, fails permanently, or the run stops."""
        attempt = 0
        while not self.should_stop():
            outcome = send(self.requests[batch])
            if outcome == "ok":
                self.ack(batch)
                return
            if outcome == "permanent":
                with self.lock:
                    self.failed += 1
                return
            attempt += 1
            delay = min(self.args.max_backoff, self.args.backoff * 2 ** min(attempt, 10))
            self.stop.wait(delay * (0.5 + random.random()))

    def worker(self) -> None:
        args = self.args
        if args.grpc:
            channel = grpc.insecure_channel(
                args.grpc,
                options=[
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 500),
                    ("grpc.enable_retries", 0),
                ],
            )
            stub = channel.unary_unary(
                EXPORT, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
            )

            def send(raw: bytes) -> str:
                try:
                    response = stub(raw, timeout=args.rpc_timeout, wait_for_ready=False)
                except grpc.RpcError as err:
                    code = err.code()  # type: ignore[attr-defined]
                    retryable = code in RETRYABLE_GRPC
                    hint = grpc_retry_hint(err)
                    self.note(
                        code.name if hint is not None else f"{code.name}(no hint)", hint, retryable, err.details()
                    )
                    return "retry" if retryable else "permanent"
                if response.partial_success.rejected_spans:
                    self.note("PARTIAL", None, False)
                    return "permanent"
                return "ok"

            try:
                self._loop(send)
            finally:
                channel.close()
        else:
            with httpx.Client(base_url=args.http, timeout=args.rpc_timeout) as client:

                def send(raw: bytes) -> str:
                    try:
                        r = client.post("/v1/traces", content=raw, headers={"Content-Type": "application/x-protobuf"})
                    except httpx.TransportError as exc:
                        self.note(f"{type(exc).__name__}(no connection)", None, True)
                        return "retry"
                    retryable = r.status_code in RETRYABLE_HTTP
                    if r.status_code == 200:
                        if ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans:
                            self.note("PARTIAL", None, False)
                            return "permanent"
                        return "ok"
                    after = r.headers.get("retry-after")
                    self.note(f"HTTP {r.status_code}", float(after) if after else None, retryable)
                    return "retry" if retryable else "permanent"

                self._loop(send)

    def _loop(self, send: Any) -> None:
        while not self.stop.is_set():
            batch = self.next_batch()
            if batch is None:
                return
            self.send_one(batch, send)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--grpc", help="gRPC target host:port")
    target.add_argument("--http", help="OTLP/HTTP base URL")
    p.add_argument("--client", type=int, required=True)
    p.add_argument("--batches", type=int, required=True)
    p.add_argument("--spans", type=int, required=True)
    p.add_argument("--acks", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--deadline", type=float, default=60.0)
    p.add_argument("--give-up", type=float, default=20.0)
    p.add_argument("--rpc-timeout", type=float, default=30.0)
    p.add_argument("--backoff", type=float, default=0.05)
    p.add_argument("--max-backoff", type=float, default=0.5)
    args = p.parse_args()
    run = Run(args)
    print(f"READY {args.client}", flush=True)
    run.started = run.last_ack = time.monotonic()
    threads = [threading.Thread(target=run.worker, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.acks.close()
    summary = {
        "client": args.client,
        "acked": run.acked,
        "batches": args.batches,
        "failed": run.failed,
        "gave_up": run.gave_up,
        "codes": dict(run.codes),
        "hinted": run.hinted,
        "unhinted": run.unhinted,
        "unhinted_details": run.unhinted_details,
        "max_hint": run.max_hint,
        "seconds": round(time.monotonic() - run.started, 3),
    }
    print(json.dumps(summary), flush=True)
    if run.failed:
        return 1
    return 0 if run.acked == args.batches else 3


if __name__ == "__main__":
    sys.exit(main())
