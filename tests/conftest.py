"""Shared fixtures: real servers on free loopback ports, real files in tmp_path; everything torn down."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_feedback.config import Settings
from otel_feedback.server import Server
from otel_feedback.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "test.duckdb"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def make_server(db_path: Path, **overrides: object) -> Server:
    """An in-process server on free loopback ports (the caller stops it)."""
    given: dict[str, object] = {"db": str(db_path), "grpc_port": 0, "http_port": 0, "host": "127.0.0.1"}
    settings = Settings.load(env={}, **{**given, **overrides})
    return Server(settings).start()


@pytest.fixture
def server(db_path: Path) -> Iterator[Server]:
    srv = make_server(db_path)
    yield srv
    srv.stop()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


def sql(server: Server, query: str, params: dict | None = None) -> list[dict]:
    """Rows of a query against a running in-process server, as dicts."""
    assert server.store is not None
    res = server.store.query(query, params)
    return [dict(zip(res.columns, row, strict=True)) for row in res.rows]


def send_trace(server: Server, *, service: str, name: str, attributes: dict[str, str]) -> dict[str, str]:
    """A root span ``name`` with ``attributes`` and one ``retrieve`` child, sent with the real SDK over gRPC;
    their hex ids (``trace``, ``root``, ``child``)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=server.grpc_target, insecure=True)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(name, attributes=attributes) as root:
        with tracer.start_as_current_span("retrieve") as child:
            pass
    provider.shutdown()
    return {
        "trace": format(root.get_span_context().trace_id, "032x"),
        "root": format(root.get_span_context().span_id, "016x"),
        "child": format(child.get_span_context().span_id, "016x"),
    }


@dataclass
class ServeProcess:
    """``otel-feedback serve`` in a subprocess (for kill -9 and signal tests)."""

    proc: subprocess.Popen[str]
    grpc_target: str
    http_url: str
    db: Path

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)


_LISTEN = re.compile(r"OTLP/gRPC \+ FeedbackService\s+(\S+)\n\s+OTLP/HTTP, feedback, query\s+(\S+)")


def start_serve(db: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> ServeProcess:
    """Start ``python -m otel_feedback serve`` on free ports and wait for its "listening" lines."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full_env.update(env or {})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otel_feedback",
            "serve",
            "--db",
            str(db),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
    )
    out = ""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out += line
        m = _LISTEN.search(out)
        if m:
            return ServeProcess(proc, m.group(1), m.group(2), db)
    proc.kill()
    proc.wait()
    raise AssertionError(f"serve did not start:\n{out}")


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[ServeProcess]:
    sp = start_serve(tmp_path / "served.duckdb")
    yield sp
    if sp.proc.poll() is None:
        sp.proc.kill()
        sp.proc.wait(30)
