"""Composition root of ``otel-feedback serve``: what starts in which order, and how it stops.

Start: open the store (migrating it), bind both ports (a taken port is one clear error before
anything serves), start gRPC, start HTTP (uvicorn on a thread of its own), print where it listens.
Stop (SIGINT/SIGTERM, or :meth:`Server.stop`): refuse new requests on both transports, let in-flight
requests finish (they wait for their commit), drain the writer, checkpoint and close the file.
A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from . import feedback as fb
from . import keepout, procmem
from .api import Api
from .config import Settings
from .errors import ConfigError, InvalidRequest
from .forward import Forwarder
from .ingest import Ingest
from .receiver import LOGS_SERVICE, TRACE_SERVICE, make_server, otlp_handlers
from .store import Store

_log = logging.getLogger(__name__)


def dedicated_process() -> None:
    """Process-wide settings for ``otel-feedback serve`` (a process that only serves), not for apps that embed
    :class:`Server`. Call before :meth:`Server.start`; call :func:`started` after it.

    pandas, and numpy where it is not imported yet, are kept out (:mod:`.keepout`; the ``otel-feedback``
    entry point does it before anything imports pyarrow), and the allocators are told to give memory back
    (:mod:`.procmem`)."""
    keepout.install()
    procmem.configure()


def started() -> None:
    """After start-up: what is alive now (modules, bindings, the schema) lives as long as the process, so the
    garbage collector stops scanning it. A full collection then no longer stalls every thread for 85-95 ms
    (measured during one-at-a-time PATCHes, where it made the slowest request)."""
    gc.collect()
    gc.freeze()
    global _TRIMMER
    if _TRIMMER is None:
        _TRIMMER = procmem.Trimmer().start()


_TRIMMER: procmem.Trimmer | None = None


class PortInUse(OSError):
    """A port the server needs is taken."""


def _bind(host: str, port: int, setting: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: a response written in two parts (headers, body) must not wait
    # for the client's delayed ACK (Nagle), which added ~45 ms to every PATCH.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another port with {setting}"
        ) from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def load_feedback_config(settings: Settings) -> fb.FeedbackConfig:
    if not settings.config:
        return fb.FeedbackConfig(strict=settings.strict)
    path = Path(settings.config)
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"OTEL_FEEDBACK_CONFIG: cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"OTEL_FEEDBACK_CONFIG: {path} is not valid JSON: {exc}") from None
    try:
        return fb.FeedbackConfig.from_json(doc, strict=settings.strict, where=str(path))
    except InvalidRequest as exc:
        raise ConfigError(f"OTEL_FEEDBACK_CONFIG: {exc}") from None


def _file_declarations(config: fb.FeedbackConfig) -> list[fb.Declaration]:
    """What the config file itself declares (not the built-in defaults it starts from)."""
    defaults = {d.name: d for d in fb.DEFAULT_DECLARATIONS}
    return [d for name, d in config.declarations.items() if defaults.get(name) != d]


def _with_stored(store: Store, config: fb.FeedbackConfig) -> fb.FeedbackConfig:
    """Defaults, then the declarations stored earlier over the API, then the config file's (which win)."""
    res = store.query("SELECT name, type, labels, min_value, max_value, description FROM feedback_configs")
    merged = {d.name: d for d in fb.DEFAULT_DECLARATIONS}
    for name, kind, labels, lo, hi, desc in res.rows:
        merged[name] = fb.Declaration(name, kind, tuple(labels or ()), lo, hi, desc)
    merged.update({d.name: d for d in _file_declarations(config)})
    return fb.FeedbackConfig(merged, config.strict)


class Server:
    """Everything ``serve`` runs, in one process. ``start()`` returns once both ports accept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Store | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._grpc: Any = None
        self._health: Any = None
        self._uvicorn: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self._forwarder: Forwarder | None = None
        self._stopped = False
        self._stop_lock = threading.Lock()
        self.ingest: Ingest | None = None

    @property
    def http_url(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"{host}:{self.grpc_port}"

    def start(self) -> Server:
        s = self.settings
        config = load_feedback_config(s)
        http_sock = _bind(s.host, s.http_port, "--http-port / OTEL_FEEDBACK_HTTP_PORT")
        try:
            if s.grpc_port:
                # grpc core logs its own C-level line when a bind fails; check first so a taken port is one line.
                _bind(s.host, s.grpc_port, "--grpc-port / OTEL_FEEDBACK_GRPC_PORT").close()
            try:
                self.store = Store(
                    s.db,
                    queue_rows=s.queue_rows,
                    commit_rows=s.commit_rows,
                    lockdown=True,
                    memory_limit=s.memory_limit,
                    journal=s.journal,
                    checkpoint_threshold=s.checkpoint_threshold,
                    memory_target=s.memory_target,
                    idle_cache=s.idle_cache,
                    threads=s.duckdb_threads(),
                )
            except ConfigError as exc:  # the store's only one: the memory target
                raise ConfigError(f"OTEL_FEEDBACK_MEMORY_TARGET: {exc}") from None
            if s.forward_to:
                self._forwarder = Forwarder(s.forward_to)
            self.ingest = Ingest(self.store, s, _with_stored(self.store, config), forward=self._forwarder)
            if _file_declarations(config):  # SQL (feedback_configs) shows what is in force
                self.ingest.declare(_file_declarations(config))
            from .queryapi import QueryEndpoint
            from .service import SERVICE, feedback_handlers

            handlers = otlp_handlers(self.ingest) + feedback_handlers(self.ingest)
            try:
                self._grpc, self.grpc_port, self._health = make_server(
                    handlers,
                    s.host,
                    s.grpc_port,
                    max_message_bytes=s.max_body_bytes,
                    service_names=(TRACE_SERVICE, LOGS_SERVICE, SERVICE),
                )
            except OSError as exc:
                raise PortInUse(f"{exc}; choose another port with --grpc-port / OTEL_FEEDBACK_GRPC_PORT") from None
            self.http_port = http_sock.getsockname()[1]
            api = Api(self.ingest, query=QueryEndpoint(self.store, s))
            self._grpc.start()
            self._start_http(api, http_sock)
        except BaseException:
            http_sock.close()
            self._close_quietly()
            raise
        return self

    def _start_http(self, api: Api, sock: socket.socket) -> None:
        config = uvicorn.Config(
            api.app(), log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=30
        )
        server = uvicorn.Server(config)
        self._uvicorn = server

        def run() -> None:
            asyncio.run(server.serve(sockets=[sock]))

        self._http_thread = threading.Thread(target=run, name="otel-feedback-http", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not self._http_thread.is_alive():
                raise RuntimeError("the HTTP server failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start within 30 s")
            time.sleep(0.01)

    def _close_quietly(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(None)
        if self._forwarder is not None:
            self._forwarder.close(1_000)
        if self.store is not None:
            self.store.close()

    def stop(self, timeout_millis: int = 30_000) -> bool:
        """Stop accepting, finish in-flight requests, drain the writer, close the file. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return True
            self._stopped = True
        deadline = time.monotonic() + timeout_millis / 1000

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if self._health is not None:
            self._health.enter_graceful_shutdown()
        grpc_done = self._grpc.stop(grace=min(left(), 10.0)) if self._grpc is not None else None
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(left())
        if grpc_done is not None:
            grpc_done.wait(left())
        if self._forwarder is not None:
            self._forwarder.close(int(min(left(), 5.0) * 1000))
        ok = True
        if self.store is not None:
            ok = self.store.close(timeout_millis=left() * 1000)
        return ok

    def serve_forever(self, announce: Any = print) -> None:
        """Run until SIGINT or SIGTERM; a second signal exits immediately."""
        stop = threading.Event()
        signals = 0

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                announce("otel-feedback: second signal, exiting now")
                os._exit(130)
            announce(f"otel-feedback: {signal.Signals(signum).name} received, shutting down (again to force)")
            stop.set()

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(0.5):
                pass
            ok = self.stop()
            announce("otel-feedback: stopped" + ("" if ok else " (the writer did not finish in time)"))
            writer = self.store.writer if self.store is not None else None
            if writer is not None and writer.stats.commits:
                st = writer.stats
                journal = (
                    f"; journal: {st.journal_writes:,} appends, {st.journal_seconds:,.1f} s writing and syncing"
                    if st.journal_writes
                    else ""
                )
                checkpoints = (
                    f"; {st.checkpoints:,} checkpoints, {st.checkpoint_seconds:,.1f} s" if st.checkpoints else ""
                )
                announce(
                    f"otel-feedback: wrote {st.rows:,} rows in {st.commits:,} commits "
                    f"({st.rows / st.commits:,.0f} rows per commit, {st.commit_seconds:,.1f} s committing, the longest "
                    f"{st.longest_commit_seconds:,.2f} s){checkpoints}{journal}"
                )
            memory = self.store.memory if self.store is not None else None
            if memory is not None and (memory.trims or memory.escalations or memory.write_escalations):
                announce(
                    f"otel-feedback: DuckDB's cache trimmed {memory.trims:,} times ({memory.evicted_bytes / 1e6:,.0f} MB "
                    f"handed back, {memory.trim_seconds:,.1f} s, the longest {memory.longest_trim_seconds * 1000:,.0f} "
                    f"ms); past the {memory.target} target to {memory.limit} for {memory.escalations:,} queries "
                    f"({memory.reruns:,} of them run again) and {memory.write_escalations:,} appends beside queries "
                    f"({memory.write_waits:,} waits for queries to end first, {memory.write_wait_seconds:,.1f} s); "
                    f"{memory.spared_reads:,} searches for copies of spans kept out of the cache "
                    f"({memory.spared_reruns:,} run again within the target)"
                )
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
