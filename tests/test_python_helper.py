"""``otel_feedback.query``: SQL results as Arrow (and so pandas / Polars), on a file or a running server.

Data goes in through a real server (OTLP/HTTP protobuf spans, a PATCH of feedback); queries run on the
file, on the server by URL, and on a file held by a running ``otel-feedback serve`` subprocess.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

import otel_feedback
from otel_feedback import DatabaseLocked, QueryError, QueryRejected
from otel_feedback.client import open_source

from .conftest import make_server, start_serve

T0 = 1_760_000_000_000_000_000  # 2025-10-09T08:53:20Z
TRACES = [f"{i:032x}" for i in range(1, 4)]
SQL = "SELECT trace_id, root_name, start_time, span_count, user_feedback_rating, input FROM traces ORDER BY trace_id"


def kv(key: str, value: str | int) -> KeyValue:
    v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=v)


def fill(url: str) -> None:
    """Three traces (root + one child each; the second root says hi in input.value); a rating on trace 2."""
    spans = []
    for i, tid in enumerate(TRACES):
        root = f"{i + 1:016x}"
        spans.append(
            Span(
                trace_id=bytes.fromhex(tid),
                span_id=bytes.fromhex(root),
                name=f"answer-{i}",
                start_time_unix_nano=T0 + i * 1_000_000_000,
                end_time_unix_nano=T0 + i * 1_000_000_000 + 5_000_000,
                attributes=[kv("input.value", f"question {i}"), kv("n", i)],
            )
        )
        spans.append(
            Span(
                trace_id=bytes.fromhex(tid),
                span_id=bytes.fromhex(f"{i + 1:08x}{0xFFFF:08x}"),
                parent_span_id=bytes.fromhex(root),
                name="llm",
                start_time_unix_nano=T0 + i * 1_000_000_000 + 1_000_000,
                end_time_unix_nano=T0 + i * 1_000_000_000 + 4_000_000,
            )
        )
    req = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", "helper-test")]),
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    )
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/traces", content=req.SerializeToString(), headers={"content-type": "application/x-protobuf"})
        assert r.status_code == 200, r.text
        r = http.patch(f"/v1/traces/{TRACES[1]}", json={"attributes": {"user_feedback_rating": 4}})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("helper") / "helper.duckdb"
    srv = make_server(path)
    try:
        fill(srv.http_url)
    finally:
        srv.stop()
    return path


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_FEEDBACK_URL", "OTEL_FEEDBACK_DB", "OTEL_FEEDBACK_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def served(db: Path) -> Iterator[str]:
    """A running in-process server holding the same data (its own file, filled the same way); its URL."""
    srv = make_server(db.parent / "served.duckdb")
    try:
        fill(srv.http_url)
        yield srv.http_url
    finally:
        srv.stop()


def check_table(table: pa.Table) -> None:
    assert table.column_names == ["trace_id", "root_name", "start_time", "span_count", "user_feedback_rating", "input"]
    rows = table.to_pylist()
    assert [r["trace_id"] for r in rows] == TRACES
    assert [r["root_name"] for r in rows] == ["answer-0", "answer-1", "answer-2"]
    assert [r["span_count"] for r in rows] == [2, 2, 2]
    assert [r["user_feedback_rating"] for r in rows] == [None, 4.0, None]
    assert [r["input"] for r in rows] == ["question 0", "question 1", "question 2"]
    assert [int(pd.Timestamp(r["start_time"]).value) for r in rows] == [T0, T0 + 10**9, T0 + 2 * 10**9]


def test_query_on_a_file_returns_arrow(db: Path, no_env: None) -> None:
    table = otel_feedback.query(SQL, db=str(db))
    assert isinstance(table, pa.Table)
    check_table(table)


def test_query_on_a_server_returns_the_same_arrow_table(db: Path, served: str, no_env: None) -> None:
    on_file = otel_feedback.query(SQL, db=str(db))
    on_server = otel_feedback.query(SQL, url=served)
    check_table(on_server)
    assert on_server.equals(on_file)


def test_pandas_and_polars_from_the_result(db: Path, served: str, no_env: None) -> None:
    for table in (otel_feedback.query(SQL, db=str(db)), otel_feedback.query(SQL, url=served)):
        df = table.to_pandas()
        assert list(df["root_name"]) == ["answer-0", "answer-1", "answer-2"]
        assert df["user_feedback_rating"].isna().tolist() == [True, False, True]
        assert df.loc[1, "user_feedback_rating"] == 4.0
        assert str(df["start_time"].dtype).startswith("datetime64[ns")
        assert df["start_time"].iloc[0] == pd.Timestamp(T0, unit="ns")
        pf = pl.from_arrow(table)
        assert isinstance(pf, pl.DataFrame)
        assert pf.shape == (3, 6)
        assert pf.filter(pl.col("user_feedback_rating") == 4)["trace_id"].to_list() == [TRACES[1]]
        assert pf["start_time"].dtype == pl.Datetime("ns")


def test_named_and_positional_parameters(db: Path, served: str, no_env: None) -> None:
    named = "SELECT name FROM spans WHERE trace_id = $t AND parent_span_id IS NULL"
    positional = "SELECT count(*) AS n FROM spans WHERE name = ? AND start_time >= ?"
    for where in ({"db": str(db)}, {"url": served}):
        assert otel_feedback.query(named, {"t": TRACES[2]}, **where).to_pylist() == [{"name": "answer-2"}]
        since = datetime(2025, 10, 9, 8, 53, 21)  # after the first trace started
        got = otel_feedback.query(positional, ["llm", since.isoformat()], **where).to_pylist()
        assert got == [{"n": 2}]


def test_json_columns_arrive_as_json_text(db: Path, no_env: None) -> None:
    rows = otel_feedback.query(
        "SELECT attributes FROM spans WHERE trace_id = $t AND parent_span_id IS NULL", {"t": TRACES[1]}, db=str(db)
    ).to_pylist()
    import json

    assert json.loads(rows[0]["attributes"]) == {"input.value": "question 1", "n": 1, "user_feedback_rating": 4}


def test_max_rows(db: Path, served: str, no_env: None) -> None:
    for where in ({"db": str(db)}, {"url": served}):
        table = otel_feedback.query("SELECT span_id FROM span_log ORDER BY span_id", max_rows=4, **where)
        assert table.num_rows == 4


def test_a_server_row_cap_is_a_warning_not_silence(tmp_path: Path, no_env: None) -> None:
    srv = make_server(tmp_path / "capped.duckdb", query_max_rows=2)
    try:
        fill(srv.http_url)
        with pytest.warns(UserWarning, match=r"only the first 2 rows.*OTEL_FEEDBACK_QUERY_MAX_ROWS"):
            table = otel_feedback.query("SELECT * FROM span_log", url=srv.http_url)
        assert table.num_rows == 2
    finally:
        srv.stop()


def test_errors_are_query_errors_on_both(db: Path, served: str, no_env: None) -> None:
    for where in ({"db": str(db)}, {"url": served}):
        with pytest.raises(QueryError, match="no_such_column"):
            otel_feedback.query("SELECT no_such_column FROM spans", **where)
        with pytest.raises(QueryRejected, match="exactly one SQL statement; got 2"):
            otel_feedback.query("SELECT 1; SELECT 2", **where)


def test_the_file_is_never_written(db: Path, no_env: None) -> None:
    with pytest.raises(QueryError, match="read-only"):
        otel_feedback.query("CREATE TABLE x AS SELECT 1", db=str(db))
    assert otel_feedback.query("SELECT count(*) AS n FROM span_log", db=str(db)).to_pylist() == [{"n": 6}]


def test_a_file_held_by_a_running_server_is_queried_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` holds the file (no other process may open it); the helper asks the server that says it
    writes that file, and refuses one that writes another."""
    held = tmp_path / "held.duckdb"
    other = make_server(tmp_path / "other.duckdb")  # a server writing a different file
    sp = start_serve(held)
    try:
        fill(sp.http_url)
        monkeypatch.delenv("OTEL_FEEDBACK_DB", raising=False)
        monkeypatch.setenv("OTEL_FEEDBACK_HTTP_PORT", str(other.http_port))  # the "default port" holds another file
        monkeypatch.delenv("OTEL_FEEDBACK_URL", raising=False)
        with pytest.raises(DatabaseLocked, match=r"in use by another process.*says it writes"):
            otel_feedback.query(SQL, db=str(held))

        monkeypatch.setenv("OTEL_FEEDBACK_URL", sp.http_url)
        check_table(otel_feedback.query(SQL, db=str(held)))
        with open_source(str(held)) as source:
            assert source.url == sp.http_url
            assert source.note == f"{held} is held by the running server at {sp.http_url}; asking it"

        # The "default port" is the fallback too, when it is the server that writes the file.
        monkeypatch.delenv("OTEL_FEEDBACK_URL")
        monkeypatch.setenv("OTEL_FEEDBACK_HTTP_PORT", sp.http_url.rsplit(":", 1)[1])
        check_table(otel_feedback.query(SQL, db=str(held)))
    finally:
        sp.terminate()
        other.stop()
    # Once the server is gone the file itself answers.
    check_table(otel_feedback.query(SQL, db=str(held)))


def test_url_from_the_environment_when_no_file_is_named(served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_FEEDBACK_URL", served)
    check_table(otel_feedback.query(SQL))


def test_an_unreachable_server(no_env: None) -> None:
    from otel_feedback import StoreUnavailable

    with pytest.raises(StoreUnavailable, match=r"cannot reach the server at http://127\.0\.0\.1:9"):
        otel_feedback.query("SELECT 1", url="http://127.0.0.1:9")


def test_query_is_public() -> None:
    assert "query" in otel_feedback.__all__
    assert otel_feedback.query.__doc__ and "polars.from_arrow" in otel_feedback.query.__doc__
