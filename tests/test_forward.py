"""``--forward-to``: what one server stores it also re-exports to another OTLP/gRPC endpoint (here a second
otel-feedback server), whichever decoder took the request."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import make_server, send_trace, sql


@pytest.mark.parametrize("compiled", [True, False])
def test_spans_are_forwarded(tmp_path: Path, compiled: bool) -> None:
    downstream = make_server(tmp_path / "down.duckdb")
    try:
        upstream = make_server(
            tmp_path / "up.duckdb", forward_to=f"http://{downstream.grpc_target}", compiled_decoder=compiled
        )
        try:
            ids = send_trace(upstream, service="fwd", name="ask", attributes={"input.value": "q?"})
            stored = sql(upstream, "SELECT span_id, name, input FROM span_log ORDER BY name")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                forwarded = sql(downstream, "SELECT span_id, name, input FROM span_log ORDER BY name")
                if len(forwarded) == len(stored):
                    break
                time.sleep(0.1)
        finally:
            upstream.stop()
    finally:
        downstream.stop()
    assert stored == [
        {"span_id": ids["root"], "name": "ask", "input": "q?"},
        {"span_id": ids["child"], "name": "retrieve", "input": None},
    ]
    assert forwarded == stored
