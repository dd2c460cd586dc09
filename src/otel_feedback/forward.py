"""``--forward-to``: re-export what was received (after it was committed here) to another OTLP/gRPC
endpoint, so otel-feedback can sit inside a pipeline (Jaeger, Phoenix, a Collector), not only at its end.

Forwarding is best effort and never slows ingest: requests wait in a bounded queue drained by one
thread; a failed send is retried a few times with backoff, then dropped and counted (``dropped``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from urllib.parse import urlparse

import grpc
from google.protobuf.message import Message

from .receiver import LOGS_SERVICE, TRACE_SERVICE

_log = logging.getLogger(__name__)


class Forwarder:
    def __init__(self, url: str, *, max_queue: int = 1000, attempts: int = 5, timeout_s: float = 10.0) -> None:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if not parsed.hostname or not parsed.port:
            raise ValueError(f"--forward-to must look like http://host:port, got {url!r}")
        self.target = f"{parsed.hostname}:{parsed.port}"
        if parsed.scheme == "https":
            self._channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials())
        else:
            self._channel = grpc.insecure_channel(self.target)
        ident = lambda b: b  # noqa: E731 - raw bytes in, raw bytes out
        self._calls = {
            "traces": self._channel.unary_unary(f"/{TRACE_SERVICE}/Export", ident, ident),
            "logs": self._channel.unary_unary(f"/{LOGS_SERVICE}/Export", ident, ident),
        }
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(max_queue)
        self._attempts = attempts
        self._timeout_s = timeout_s
        self.sent = 0
        self.dropped = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="otel-feedback-forward", daemon=True)
        self._thread.start()

    def traces(self, request: Message) -> None:
        self._put("traces", request.SerializeToString())

    def traces_bytes(self, raw: bytes) -> None:
        """A trace export request as the protobuf bytes it arrived in (sent on unchanged)."""
        self._put("traces", raw)

    def logs(self, request: Message) -> None:
        self._put("logs", request.SerializeToString())

    def _put(self, kind: str, data: bytes) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait((kind, data))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, raw = item
            delay = 0.2
            for attempt in range(self._attempts):
                try:
                    self._calls[kind](raw, timeout=self._timeout_s, compression=grpc.Compression.Gzip)
                    self.sent += 1
                    break
                except grpc.RpcError as exc:
                    code = exc.code() if hasattr(exc, "code") else None
                    if (
                        code
                        not in (
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                        )
                        or attempt == self._attempts - 1
                    ):
                        self.dropped += 1
                        _log.warning("otel-feedback: forwarding %s to %s failed: %s", kind, self.target, code)
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)

    def close(self, timeout_millis: int = 5000) -> None:
        """Send what is queued (within the time given), then stop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(None, timeout=timeout_millis / 1000)
        except queue.Full:
            pass
        self._thread.join(timeout_millis / 1000)
        self._channel.close()
