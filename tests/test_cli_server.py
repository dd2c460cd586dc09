"""``query`` and ``export`` on a file held by a running ``serve``: they ask that server instead (DuckDB lets no
other process open the file), but only a server that says it writes that very file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pyarrow.parquet as pq
import pytest

from .conftest import start_serve

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _cli(*args: str, cwd: Path, url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if url:  # where a server would normally be: the HTTP port setting (OTEL_FEEDBACK_URL would be used directly)
        env["OTEL_FEEDBACK_HTTP_PORT"] = url.rsplit(":", 1)[1]
    return subprocess.run(
        [sys.executable, "-m", "otel_feedback", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_query_and_export_fall_back_to_the_server_holding_the_file(tmp_path: Path) -> None:
    served = start_serve(tmp_path / "held.duckdb")
    other = start_serve(tmp_path / "other.duckdb")
    try:
        r = httpx.patch(f"{served.http_url}/v1/traces/{TRACE}", json={"attributes": {"user_feedback": "negative"}})
        assert r.status_code == 200, r.text
        sql = "SELECT trace_id, attributes->>'user_feedback' AS thumbs FROM feedback"

        q = _cli("query", "--db", str(served.db), "--format", "json", sql, cwd=tmp_path, url=served.http_url)
        assert q.returncode == 0, q.stderr
        assert orjson.loads(q.stdout) == [{"trace_id": TRACE, "thumbs": "negative"}]
        assert f"is held by the server at {served.http_url}" in q.stderr

        out = tmp_path / "cases.parquet"
        e = _cli("export", "--db", str(served.db), "--output", str(out), sql, cwd=tmp_path, url=served.http_url)
        assert e.returncode == 0, e.stderr
        assert pq.read_table(out).to_pylist() == [{"trace_id": TRACE, "thumbs": "negative"}]

        # a server that writes a different file is never asked by mistake: the error says what to do
        q = _cli("query", "--db", str(served.db), sql, cwd=tmp_path, url=other.http_url)
        assert q.returncode == 1
        assert "is in use by another process" in q.stderr and "--url" in q.stderr
        assert "Traceback" not in q.stderr
    finally:
        for sp in (served, other):
            assert sp.terminate() == 0


def test_serve_keeps_pandas_and_numpy_out_of_its_process(tmp_path: Path) -> None:
    """pyarrow imports pandas (when installed, as it is with the test dependencies) on its first conversion of a
    Python list, and numpy at its own import; ``serve`` refuses both (42 and 54 MB of RSS). After a span export,
    a PATCH and a query, no pandas or numpy extension module is mapped into the server, and it answered."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc (Linux)")
    pytest.importorskip("pandas")
    served = start_serve(tmp_path / "lean.duckdb")
    try:
        span = {
            "traceId": TRACE, "spanId": "00f067aa0ba902b7", "name": "answer",
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000",
            "attributes": [{"key": "input.value", "value": {"stringValue": "hi"}}],
        }  # fmt: skip
        body = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
        assert httpx.post(f"{served.http_url}/v1/traces", json=body).status_code == 200
        r = httpx.patch(f"{served.http_url}/v1/traces/{TRACE}", json={"attributes": {"user_feedback": "positive"}})
        assert r.status_code == 200, r.text
        q = httpx.post(f"{served.http_url}/v1/query", json={"sql": "SELECT user_feedback FROM spans"})
        assert q.json()["rows"] == [["positive"]]
        mapped = Path(f"/proc/{served.proc.pid}/maps").read_text()
        assert "/pandas/" not in mapped
        assert "/numpy/" not in mapped and "/numpy.libs/" not in mapped
        assert "/pyarrow/" in mapped  # the check looks at the right process
    finally:
        assert served.terminate() == 0
