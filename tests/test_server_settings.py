"""Settings that shape the server's DuckDB: memory bound and checkpoint size; bad values name the variable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from otel_feedback.config import Settings
from otel_feedback.errors import ConfigError

from .conftest import make_server, sql


def test_the_server_bounds_duckdb_memory(tmp_path: Path) -> None:
    """DuckDB works within the target (96MB by default); the limit is what a query that needs more gets."""
    srv = make_server(tmp_path / "m.duckdb", memory_limit="256MB")
    try:
        rows = sql(srv, "SELECT current_setting('memory_limit') AS m, current_setting('checkpoint_threshold') AS c")
        assert rows[0]["m"] in ("96.0 MB", "91.5 MiB")
        assert rows[0]["c"] in ("22.8 MiB", "24.0 MB")
        assert srv.store is not None and srv.store.memory is not None and srv.store.memory.limit == "256MB"
    finally:
        srv.stop()
    srv = make_server(tmp_path / "t.duckdb", memory_limit="256MB", memory_target="1GB")  # a target above the limit
    try:
        rows = sql(srv, "SELECT current_setting('memory_limit') AS m")
        assert rows[0]["m"] in ("256.0 MB", "244.1 MiB")
    finally:
        srv.stop()


def test_a_target_too_small_refuses_to_start_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OTEL_FEEDBACK_MEMORY_TARGET must be at least 16MB"):
        make_server(tmp_path / "tiny.duckdb", memory_target="64KB")


def test_default_memory_limit_is_512_megabytes() -> None:
    assert Settings.load(env={}).memory_limit == "512MB"
    assert Settings.load(env={"OTEL_FEEDBACK_MEMORY_LIMIT": "2GB"}).memory_limit == "2GB"


@pytest.mark.parametrize("bad", ["lots", "1 GB; DROP TABLE x", "-5MB", ""])
def test_a_bad_memory_limit_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="OTEL_FEEDBACK_MEMORY_LIMIT"):
        Settings.load(env={"OTEL_FEEDBACK_MEMORY_LIMIT": bad})


def test_checkpoint_threshold_is_a_setting(tmp_path: Path) -> None:
    assert Settings.load(env={}).checkpoint_threshold == "24MB"
    srv = make_server(tmp_path / "c.duckdb", checkpoint_threshold="64MB")
    try:
        rows = sql(srv, "SELECT current_setting('checkpoint_threshold') AS c")
        assert rows[0]["c"] in ("61.0 MiB", "64.0 MB")
    finally:
        srv.stop()
    assert Settings.load(env={"OTEL_FEEDBACK_CHECKPOINT_THRESHOLD": "1GB"}).checkpoint_threshold == "1GB"


@pytest.mark.parametrize("bad", ["often", "-1MB", ""])
def test_a_bad_checkpoint_threshold_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="OTEL_FEEDBACK_CHECKPOINT_THRESHOLD"):
        Settings.load(env={"OTEL_FEEDBACK_CHECKPOINT_THRESHOLD": bad})


def test_a_query_out_of_memory_names_the_setting_to_raise(tmp_path: Path) -> None:
    import httpx

    srv = make_server(tmp_path / "o.duckdb", memory_limit="32MB")
    try:
        r = httpx.post(
            f"{srv.http_url}/v1/query",
            json={"sql": "SELECT list(x || 'padding to make it big') AS l FROM range(5000000) t(x)"},
            timeout=60,
        )
        body = r.json()
        assert r.status_code == 400 and not body["ok"], body
        assert "Out of Memory" in body["error"] and "OTEL_FEEDBACK_MEMORY_LIMIT" in body["error"], body["error"]
        assert "SET memory_limit" not in body["error"]  # DuckDB's advice cannot be followed through the server
        # the server goes on answering
        ok = httpx.post(f"{srv.http_url}/v1/query", json={"sql": "SELECT 1 AS one"}, timeout=60).json()
        assert ok["rows"] == [[1]]
    finally:
        srv.stop()


def test_duckdb_has_every_core_for_queries_and_one_fewer_for_ingest_alone(tmp_path: Path) -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    assert Settings.load(env={}).threads == 0
    assert Settings.load(env={}).duckdb_threads() == cores
    assert Settings.load(env={"OTEL_FEEDBACK_THREADS": "3"}).duckdb_threads() == 3
    for threads, path in ((0, "d.duckdb"), (3, "e.duckdb")):
        srv = make_server(tmp_path / path, threads=threads)
        try:
            busy = threads or cores
            # a query through the server sees the query threads; between queries DuckDB has one fewer
            assert sql(srv, "SELECT current_setting('threads') AS t")[0]["t"] == busy
            assert srv.store is not None
            cur = srv.store.cursor()  # a raw cursor: not a query of the server's
            try:
                deadline = time.monotonic() + 30  # the writer sets them back once no query ran for a moment
                while cur.execute("SELECT current_setting('threads')").fetchall() != [(max(1, busy - 1),)]:
                    assert time.monotonic() < deadline, "DuckDB kept the query threads"
                    time.sleep(0.05)
            finally:
                cur.close()
        finally:
            srv.stop()


@pytest.mark.parametrize("bad", ["many", "-1", "1.5"])
def test_a_bad_thread_count_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="OTEL_FEEDBACK_THREADS"):
        Settings.load(env={"OTEL_FEEDBACK_THREADS": bad})
