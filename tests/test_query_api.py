"""``POST /v1/query`` against a real server: formats, parameters, row cap, time limit, and escape attempts.

Every escape attempt must fail with a clear error and change nothing: not the data, not the catalog,
not the settings, not the files next to the database; and the server must keep ingesting afterwards.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_feedback.server import Server

from .conftest import make_server, sql

MAX_ROWS = 50
TIMEOUT_MS = 1500


def send_spans(server: Server, n: int, name: str) -> list[float]:
    """``n`` root spans over OTLP/HTTP with the real SDK exporter; seconds each export took (it waits for commit)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "query-api-test"}))
    exporter = OTLPSpanExporter(endpoint=f"{server.http_url}/v1/traces", timeout=30)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    took = []
    for i in range(n):
        span = tracer.start_span(name, attributes={"i": i, "input.value": f"question {i}"})
        t0 = time.monotonic()
        span.end()  # SimpleSpanProcessor exports synchronously: returns once the server answered
        took.append(time.monotonic() - t0)
    provider.shutdown()
    return took


def count_spans(server: Server, name: str) -> int:
    return sql(server, "SELECT count(*) AS n FROM span_log WHERE name = $n", {"n": name})[0]["n"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of real files a query might try to read or write."""
    d = tmp_path_factory.mktemp("files")
    (d / "spans.csv").write_text("trace_id,span_id,name\n" + "0" * 32 + "," + "0" * 16 + ",evil\n")
    pq.write_table(pa.table({"a": [1, 2, 3]}), d / "data.parquet")
    (d / "data.json").write_text('{"a": 1}\n')
    return d


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("db") / "query.duckdb"
    srv = make_server(db, query_max_rows=MAX_ROWS, query_timeout_ms=TIMEOUT_MS)
    send_spans(srv, 3, "seed")
    trace_id = sql(srv, "SELECT trace_id FROM span_log ORDER BY start_time LIMIT 1")[0]["trace_id"]
    r = httpx.patch(
        f"{srv.http_url}/v1/traces/{trace_id}",
        json={"attributes": {"user_feedback": "negative", "user_feedback_comment": 'a, "quoted"\ncomment'}},
    )
    assert r.status_code == 200, r.text
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(served: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.http_url, timeout=60) as c:
        yield c


def post(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/v1/query", json=body, headers=headers)


# -- formats ---------------------------------------------------------------------------------------

QUERY = """
SELECT name, span_id, (attributes->>'i')::INT AS i, user_feedback, user_feedback_comment, attributes
FROM spans WHERE name = 'seed' ORDER BY i
"""


def expected_rows(server: Server) -> list[dict[str, Any]]:
    return sql(server, QUERY)


def test_json_is_the_default(served: Server, client: httpx.Client) -> None:
    r = post(client, {"sql": QUERY})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-otel-feedback-truncated"] == "false"
    body = r.json()
    assert body["ok"] is True and body["truncated"] is False and body["row_count"] == 3
    assert body["columns"] == ["name", "span_id", "i", "user_feedback", "user_feedback_comment", "attributes"]
    assert body["types"] == ["VARCHAR", "VARCHAR", "INTEGER", "VARCHAR", "VARCHAR", "JSON"]
    want = expected_rows(served)
    got = [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]
    # JSON columns come back as JSON, not as a string holding JSON
    assert [g["attributes"] for g in got] == [orjson.loads(w["attributes"]) for w in want]
    assert [{k: v for k, v in g.items() if k != "attributes"} for g in got] == [
        {k: v for k, v in w.items() if k != "attributes"} for w in want
    ]
    assert [g["i"] for g in got] == [0, 1, 2]
    assert sum(g["user_feedback"] == "negative" for g in got) == 1


@pytest.mark.parametrize("by", ["accept", "format"])
def test_csv(served: Server, client: httpx.Client, by: str) -> None:
    r = (
        post(client, {"sql": QUERY}, accept="text/csv")
        if by == "accept"
        else post(client, {"sql": QUERY, "format": "csv"})
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    want = expected_rows(served)
    assert [row["span_id"] for row in rows] == [w["span_id"] for w in want]
    assert [row["i"] for row in rows] == ["0", "1", "2"]
    # the comment with a comma, quotes and a newline survives CSV quoting
    assert [row["user_feedback_comment"] for row in rows if row["user_feedback_comment"]] == ['a, "quoted"\ncomment']


@pytest.mark.parametrize("by", ["accept", "format"])
def test_ndjson(served: Server, client: httpx.Client, by: str) -> None:
    if by == "accept":
        r = post(client, {"sql": QUERY}, accept="application/x-ndjson")
    else:
        r = post(client, {"sql": QUERY, "format": "ndjson"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in r.content.splitlines() if line]
    want = expected_rows(served)
    assert [line["span_id"] for line in lines] == [w["span_id"] for w in want]
    assert [line["i"] for line in lines] == [0, 1, 2]
    assert [line["attributes"] for line in lines] == [orjson.loads(w["attributes"]) for w in want]


@pytest.mark.parametrize("by", ["accept", "format"])
def test_arrow_ipc(served: Server, client: httpx.Client, by: str) -> None:
    if by == "accept":
        r = post(client, {"sql": QUERY}, accept="application/vnd.apache.arrow.stream")
    else:
        r = post(client, {"sql": QUERY, "format": "arrow"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/vnd.apache.arrow.stream")
    assert r.headers["x-otel-feedback-truncated"] == "false"
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.column_names == ["name", "span_id", "i", "user_feedback", "user_feedback_comment", "attributes"]
    assert table.schema.field("i").type == pa.int32()
    want = expected_rows(served)
    assert table.column("span_id").to_pylist() == [w["span_id"] for w in want]
    assert table.column("i").to_pylist() == [0, 1, 2]


def test_accept_header_with_quality_values_and_an_unknown_format(client: httpx.Client) -> None:
    r = post(client, {"sql": "SELECT 1 AS x"}, accept="text/html;q=0.9, text/csv;q=0.8")
    assert r.status_code == 200 and r.text.splitlines() == ["x", "1"]
    r = post(client, {"sql": "SELECT 1 AS x", "format": "xml"})
    assert r.status_code == 400
    assert r.json() == {
        "ok": False,
        "status": 400,
        "error": "format: must be one of json, csv, ndjson, arrow, got 'xml'",
    }


def test_get_with_sql_and_parameters_in_the_url(client: httpx.Client) -> None:
    r = client.get("/v1/query", params={"sql": "SELECT $a::INT * 2 AS y", "p.a": "21", "format": "csv"})
    assert r.status_code == 200, r.text
    assert r.text.splitlines() == ["y", "42"]


# -- parameters ------------------------------------------------------------------------------------


def test_named_parameters_are_bound_not_spliced(served: Server, client: httpx.Client) -> None:
    r = post(client, {"sql": "SELECT count(*) AS n FROM span_log WHERE name = $name", "params": {"name": "seed"}})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[3]]
    # a value that would be an injection if spliced is just a string that matches nothing
    evil = "seed' OR '1'='1"
    r = post(client, {"sql": "SELECT count(*) AS n FROM span_log WHERE name = $name", "params": {"name": evil}})
    assert r.json()["rows"] == [[0]]
    r = post(
        client,
        {
            "sql": "SELECT $s AS s, $n + 1 AS n, $b AS b, $x IS NULL AS x",
            "params": {"s": "'; DROP VIEW spans; --", "n": 41, "b": True, "x": None},
        },
    )
    assert r.json()["rows"] == [["'; DROP VIEW spans; --", 42, True, True]]
    assert sql(served, "SELECT count(*) AS n FROM spans")[0]["n"] >= 3


def test_positional_parameters(client: httpx.Client) -> None:
    r = post(client, {"sql": "SELECT ? + ? AS s", "params": [40, 2]})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[42]]


def test_a_missing_parameter_is_a_clear_400(client: httpx.Client) -> None:
    r = post(client, {"sql": "SELECT $a AS a", "params": {"b": 1}})
    assert r.status_code == 400
    body = r.json()
    assert body["ok"] is False and body["status"] == 400 and "a" in body["error"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "sql: required, a string"),
        ({"sql": 1}, "sql: required, a string"),
        (
            {"sql": "SELECT 1", "params": "x"},
            "params: must be an object of name -> value (or a list for ? placeholders)",
        ),
        ({"sql": "SELECT 1", "max_rows": 0}, "max_rows: must be >= 1"),
        ({"sql": "SELECT 1", "max_rows": "many"}, "max_rows: must be an integer, got 'many'"),
        ({"sql": "SELECT 1", "sqll": "x"}, "body: unknown field 'sqll'; allowed: format, max_rows, params, sql"),
    ],
)
def test_bad_bodies_are_named(client: httpx.Client, body: dict[str, Any], error: str) -> None:
    r = post(client, body)
    assert r.status_code == 400
    assert r.json() == {"ok": False, "status": 400, "error": error}


# -- row cap and time limit ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "csv", "ndjson", "arrow"])
def test_the_row_cap_cuts_and_says_so(client: httpx.Client, fmt: str) -> None:
    r = post(client, {"sql": "SELECT i FROM range(1000) t(i) ORDER BY i", "format": fmt})
    assert r.status_code == 200, r.text
    assert r.headers["x-otel-feedback-truncated"] == "true"
    if fmt == "json":
        body = r.json()
        assert body["truncated"] is True and body["row_count"] == MAX_ROWS
        assert [row[0] for row in body["rows"]] == list(range(MAX_ROWS))
    elif fmt == "csv":
        assert r.text.splitlines() == ["i", *map(str, range(MAX_ROWS))]
    elif fmt == "ndjson":
        assert [orjson.loads(line)["i"] for line in r.content.splitlines()] == list(range(MAX_ROWS))
    else:
        assert pa.ipc.open_stream(r.content).read_all().column("i").to_pylist() == list(range(MAX_ROWS))


def test_max_rows_lowers_the_cap_but_cannot_raise_it(client: httpx.Client) -> None:
    r = post(client, {"sql": "SELECT i FROM range(1000) t(i) ORDER BY i", "max_rows": 7})
    body = r.json()
    assert body["truncated"] is True and [row[0] for row in body["rows"]] == list(range(7))
    r = post(client, {"sql": "SELECT i FROM range(1000) t(i) ORDER BY i", "max_rows": 10_000})
    assert r.json()["row_count"] == MAX_ROWS and r.json()["truncated"] is True
    # exactly at the cap is not truncated
    r = post(client, {"sql": f"SELECT i FROM range({MAX_ROWS}) t(i)"})
    assert r.json()["row_count"] == MAX_ROWS and r.json()["truncated"] is False
    assert r.headers["x-otel-feedback-truncated"] == "false"


LONG_QUERY = "SELECT sum(hash(i)) AS h FROM range(100000000000) t(i)"


@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_the_time_limit_stops_a_long_query_and_names_the_setting(client: httpx.Client, fmt: str) -> None:
    t0 = time.monotonic()
    r = post(client, {"sql": LONG_QUERY, "format": fmt})
    took = time.monotonic() - t0
    assert r.status_code == 400
    body = r.json()
    assert body["ok"] is False and body["status"] == 400
    assert "OTEL_FEEDBACK_QUERY_TIMEOUT_MS" in body["error"]
    assert f"{TIMEOUT_MS} ms" in body["error"]
    assert TIMEOUT_MS / 1000 * 0.9 <= took < TIMEOUT_MS / 1000 + 10
    # the connection is usable afterwards
    assert post(client, {"sql": "SELECT 1 AS one"}).json()["rows"] == [[1]]


def test_ingest_commits_while_a_long_query_runs(served: Server, client: httpx.Client) -> None:
    """Writes queue behind the one writer, not behind readers: a query that runs until its time limit
    does not hold up span exports or feedback for long."""
    result: dict[str, Any] = {}

    def long_query() -> None:
        t0 = time.monotonic()
        with httpx.Client(base_url=served.http_url, timeout=60) as c:
            result["response"] = c.post("/v1/query", json={"sql": LONG_QUERY})
        result["ended"] = time.monotonic()
        result["took"] = result["ended"] - t0

    thread = threading.Thread(target=long_query)
    started = time.monotonic()
    thread.start()
    time.sleep(0.3)  # let the query get going
    before = count_spans(served, "during-query")
    took = send_spans(served, 5, "during-query")
    trace_id = sql(served, "SELECT trace_id FROM span_log WHERE name = 'during-query' LIMIT 1")[0]["trace_id"]
    t0 = time.monotonic()
    r = client.patch(f"/v1/traces/{trace_id}", json={"attributes": {"user_feedback": "positive"}})
    patch_took = time.monotonic() - t0
    ingest_done = time.monotonic()
    thread.join(TIMEOUT_MS / 1000 + 30)
    assert not thread.is_alive()
    assert r.status_code == 200, r.text
    # the query really was running the whole time, and was stopped by the time limit
    assert result["response"].status_code == 400 and "OTEL_FEEDBACK_QUERY_TIMEOUT_MS" in result["response"].text
    assert ingest_done < result["ended"], (ingest_done - started, result["took"])
    # every export and the patch were committed (acknowledged after commit) quickly
    assert count_spans(served, "during-query") == before + 5
    assert max(took) < 1.0, took
    assert patch_took < 1.0, patch_took
    assert sql(served, "SELECT user_feedback FROM traces WHERE trace_id = $t", {"t": trace_id}) == [
        {"user_feedback": "positive"}
    ]


# -- escape attempts -------------------------------------------------------------------------------

ONLY_SELECT = "only SELECT statements are allowed here"
ONE = "send exactly one SQL statement"
WRITE_CTE = "queries may only read"
NO_CALL = "queries may not call"
NO_FILES = "file system operations are disabled by configuration"

ESCAPES: list[tuple[str, str]] = [
    # files written
    ("COPY (SELECT * FROM span_log) TO '{dir}/out.csv'", ONLY_SELECT),
    ("COPY span_log TO '{dir}/out.parquet' (FORMAT parquet)", ONLY_SELECT),
    ("EXPORT DATABASE '{dir}/exported'", ONLY_SELECT),
    # files read
    ("COPY span_log FROM '{dir}/spans.csv'", ONLY_SELECT),
    ("IMPORT DATABASE '{dir}'", ONLY_SELECT),
    ("SELECT * FROM read_csv('/etc/passwd')", NO_FILES),
    ("SELECT * FROM read_csv_auto('{dir}/spans.csv')", NO_FILES),
    ("FROM read_csv(['/etc/passwd', '/etc/hostname'])", NO_FILES),
    ("SELECT content FROM read_text('/etc/passwd')", NO_FILES),
    ("SELECT content FROM read_blob('/etc/hostname')", NO_FILES),
    ("SELECT * FROM read_parquet('{dir}/data.parquet')", NO_FILES),
    ("SELECT * FROM parquet_metadata('{dir}/data.parquet')", NO_FILES),
    ("SELECT * FROM read_json('{dir}/data.json')", NO_FILES),
    ("SELECT * FROM sniff_csv('/etc/passwd')", NO_FILES),
    ("SELECT * FROM glob('/etc/*')", NO_FILES),
    ("SELECT * FROM '{dir}/spans.csv'", NO_FILES),
    ("SELECT * FROM '{dir}/data.parquet'", NO_FILES),
    ("SELECT * FROM 'https://example.com/data.csv'", NO_FILES),
    ("FROM (SELECT 1) t, LATERAL (SELECT * FROM read_csv('/etc/passwd'))", NO_FILES),
    ("SELECT * FROM read_duckdb('{dir}/other.duckdb')", NO_FILES),
    # other databases
    ("ATTACH '{dir}/other.duckdb' AS other", ONLY_SELECT),
    ("ATTACH ':memory:' AS mem", ONLY_SELECT),
    ("DETACH query", ONLY_SELECT),
    ("USE memory", ONLY_SELECT),
    # extensions
    ("INSTALL httpfs", ONLY_SELECT),
    ("FORCE INSTALL httpfs", ONLY_SELECT),
    ("LOAD httpfs", ONLY_SELECT),
    ("LOAD '{dir}/evil.duckdb_extension'", ONLY_SELECT),
    ("UPDATE EXTENSIONS", ONLY_SELECT),
    ("SELECT * FROM sqlite_scan('{dir}/x.db', 't')", NO_FILES),
    # settings and engine state
    ("SET threads = 1", ONLY_SELECT),
    ("SET enable_external_access = true", ONLY_SELECT),
    ("SET GLOBAL lock_configuration = false", ONLY_SELECT),
    ("RESET lock_configuration", ONLY_SELECT),
    ("SET VARIABLE x = 1", ONLY_SELECT),
    ("PRAGMA enable_profiling", ONLY_SELECT),
    ("PRAGMA database_list", ONLY_SELECT),
    ("CALL pragma_version()", ONLY_SELECT),
    ("CALL enable_logging()", ONLY_SELECT),
    ("CHECKPOINT", ONLY_SELECT),
    ("FORCE CHECKPOINT", ONLY_SELECT),
    ("SELECT * FROM checkpoint()", NO_CALL),
    ("SELECT * FROM force_checkpoint()", NO_CALL),
    ("SELECT * FROM enable_logging()", NO_CALL),
    ("SELECT * FROM truncate_duckdb_logs()", NO_CALL),
    ("SELECT write_log('hello')", NO_CALL),
    ("SELECT * FROM duckdb_secrets()", NO_CALL),
    ("SELECT * FROM which_secret('s3://bucket/x', 's3')", NO_CALL),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')", ONLY_SELECT),
    ("VACUUM", ONLY_SELECT),
    ("ANALYZE", ONLY_SELECT),
    ("BEGIN TRANSACTION", ONLY_SELECT),
    ("COMMIT", ONLY_SELECT),
    # catalog changes
    ("CREATE TABLE evil (a INTEGER)", ONLY_SELECT),
    ("CREATE TEMP TABLE evil AS SELECT 1 AS a", ONLY_SELECT),
    ("CREATE VIEW evil AS SELECT 1 AS a", ONLY_SELECT),
    ("CREATE OR REPLACE VIEW spans AS SELECT 1 AS a", ONLY_SELECT),
    ("CREATE MACRO evil(a) AS a", ONLY_SELECT),
    ("CREATE SEQUENCE evil", ONLY_SELECT),
    ("ALTER TABLE span_log ADD COLUMN evil INTEGER", ONLY_SELECT),
    ("DROP VIEW spans", ONLY_SELECT),
    ("DROP TABLE span_log", ONLY_SELECT),
    ("PIVOT span_log ON name", ONLY_SELECT),
    # data changes
    ("INSERT INTO feedback_log SELECT * FROM feedback_log", ONLY_SELECT),
    ("UPDATE span_log SET name = 'evil'", ONLY_SELECT),
    ("DELETE FROM span_log", ONLY_SELECT),
    ("TRUNCATE span_log", ONLY_SELECT),
    ("WITH gone AS (DELETE FROM span_log RETURNING *) SELECT count(*) FROM gone", WRITE_CTE),
    (
        "WITH ins AS (INSERT INTO feedback_log SELECT * FROM feedback_log RETURNING 1) SELECT count(*) FROM ins",
        WRITE_CTE,
    ),
    ("WITH u AS MATERIALIZED (UPDATE span_log SET name = 'evil' RETURNING 1) SELECT * FROM u", WRITE_CTE),
    ("SELECT (WITH u AS (UPDATE span_log SET name = 'evil' RETURNING 1) SELECT count(*) FROM u) AS n", WRITE_CTE),
    ("SELECT * FROM query('DELETE FROM span_log')", NO_CALL),
    ("SELECT * FROM query('SELECT 1')", NO_CALL),
    ("SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))", NO_CALL),
    ("SELECT nextval('evil')", NO_CALL),
    # several statements, and statements hidden by comments
    ("SELECT 1; SELECT 2", ONE),
    ("SELECT 1; DROP VIEW spans", ONE),
    ("SELECT 1; -- just a comment\n DROP VIEW spans", ONE),
    ("SELECT 1 /* a comment */; DELETE FROM span_log", ONE),
    ("SELECT 1; /* DROP VIEW spans */ DELETE FROM span_log", ONE),
    ("/* SELECT 1 */ DROP VIEW spans", ONLY_SELECT),
    ("-- SELECT 1\nDELETE FROM span_log", ONLY_SELECT),
    ("SELECT 1;\nATTACH '{dir}/other.duckdb'", ONE),
    ("SELECT 1; SET enable_external_access = true; SELECT * FROM read_csv('/etc/passwd')", ONE),
    ("", "the query is empty"),
    ("  -- only a comment", ONE),
]


@pytest.fixture(scope="module")
def before_escapes(served: Server, files: Path) -> dict[str, Any]:
    return state(served, files)


def state(server: Server, files: Path) -> dict[str, Any]:
    """Everything an escape could change: data, catalog, settings, files."""
    data = {
        table: sql(server, f"SELECT count(*) AS n, sum(hash(COLUMNS(*))) AS h FROM {table}")
        for table in ("span_log", "feedback_log", "log_records", "feedback_config", "_migrations")
    }
    catalog = sql(
        server,
        """
        SELECT 'table' AS kind, database_name || '.' || schema_name || '.' || table_name AS name FROM duckdb_tables()
        UNION ALL SELECT 'view', database_name || '.' || schema_name || '.' || view_name FROM duckdb_views()
            WHERE NOT internal
        UNION ALL SELECT DISTINCT 'macro', function_name FROM duckdb_functions()
            WHERE function_type IN ('macro', 'table_macro') AND NOT internal
        UNION ALL SELECT 'sequence', sequence_name FROM duckdb_sequences()
        UNION ALL SELECT 'database', database_name FROM duckdb_databases()
        ORDER BY ALL
        """,
    )
    settings = sql(
        server,
        "SELECT name, value FROM duckdb_settings() WHERE name IN "
        "('enable_external_access', 'lock_configuration', 'threads', 'autoload_known_extensions', "
        "'autoinstall_known_extensions', 'allowed_paths', 'allowed_directories') ORDER BY name",
    )
    listing = sorted(str(p.relative_to(files)) for p in files.rglob("*"))
    return {"data": data, "catalog": catalog, "settings": settings, "files": listing}


@pytest.mark.parametrize(("attempt", "error"), ESCAPES, ids=[e[0][:60] or "empty" for e in ESCAPES])
def test_escape_attempt_fails_clearly(
    client: httpx.Client, files: Path, before_escapes: dict[str, Any], attempt: str, error: str
) -> None:
    for fmt in ("json", "arrow"):  # the two code paths that run a query
        r = post(client, {"sql": attempt.format(dir=files), "format": fmt})
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        assert body["ok"] is False and body["status"] == 400
        assert error in body["error"], body["error"]


def test_after_every_escape_attempt_nothing_changed_and_ingest_goes_on(
    served: Server, client: httpx.Client, files: Path, before_escapes: dict[str, Any]
) -> None:
    for attempt, _error in ESCAPES:  # again, in one go, in case the parametrized run was filtered
        assert post(client, {"sql": attempt.format(dir=files)}).status_code == 400, attempt
    after = state(served, files)
    assert after == before_escapes
    assert "query.main.spans" in {c["name"] for c in after["catalog"]}
    assert {s["name"]: s["value"] for s in after["settings"]}["enable_external_access"] == "false"
    # the server still ingests, and queries see the new rows
    send_spans(served, 2, "after-escapes")
    r = post(client, {"sql": "SELECT count(*) FROM spans WHERE name = 'after-escapes'"})
    assert r.json()["rows"] == [[2]]
    assert sql(served, "SELECT count(*) AS n FROM span_log WHERE name = 'seed'") == [{"n": 3}]


def test_the_engine_itself_is_locked_down_even_without_the_parser_check(served: Server, files: Path) -> None:
    """Layer 3 on its own: a cursor of the serving process refuses files and extensions, and DuckDB refuses to
    turn external access back on. (The configuration is not locked: the cache trim changes memory_limit; a SET
    sent to the server is refused by layer 1, as ESCAPES shows.)"""
    assert served.store is not None
    attempts = [
        (f"COPY (SELECT 1) TO '{files}/direct.csv'", NO_FILES),
        ("SELECT * FROM read_csv('/etc/passwd')", NO_FILES),
        (f"ATTACH '{files}/direct.duckdb' AS direct", NO_FILES),
        ("INSTALL httpfs", "disabled"),
        ("SET enable_external_access = true", "Cannot enable external access while database is running"),
    ]
    for attempt, fragment in attempts:
        cur = served.store.cursor()
        try:
            with pytest.raises(Exception, match=fragment):
                cur.execute(attempt)
        finally:
            cur.close()
    assert not (files / "direct.csv").exists() and not (files / "direct.duckdb").exists()


def test_reading_queries_that_look_suspicious_still_work(client: httpx.Client) -> None:
    """The check is on the syntax tree, not on words: strings and comments naming statements are fine."""
    for q, want in [
        ("SELECT 'DROP VIEW spans; DELETE FROM span_log' AS s", [["DROP VIEW spans; DELETE FROM span_log"]]),
        ("SELECT 1 AS one -- ; DROP VIEW spans", [[1]]),
        ("SELECT 1 AS one /* ; DELETE FROM span_log */", [[1]]),
        ("SELECT 1 AS one;", [[1]]),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT n FROM r",
            [[1], [2], [3]],
        ),
        ("SELECT count(*) FROM query_table('span_log') WHERE name = 'nothing'", [[0]]),
        ("SELECT count(*) > 0 FROM duckdb_settings()", [[True]]),
    ]:
        r = post(client, {"sql": q})
        assert r.status_code == 200, (q, r.text)
        assert r.json()["rows"] == want, q
    r = post(client, {"sql": "SUMMARIZE SELECT 1 AS a"})
    assert r.status_code == 200 and r.json()["row_count"] == 1
    r = post(client, {"sql": "DESCRIBE spans"})
    assert r.status_code == 200 and "trace_id" in [row[0] for row in r.json()["rows"]]


def test_a_query_text_is_checked_once_and_a_rejected_one_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otel_feedback import queryapi
    from otel_feedback.config import Settings
    from otel_feedback.errors import QueryRejected
    from otel_feedback.store import Store

    checks: list[str] = []
    check = queryapi.check_read_only
    monkeypatch.setattr(queryapi, "check_read_only", lambda cur, st: (checks.append(st), check(cur, st))[1])
    monkeypatch.setattr(queryapi, "CHECKED_QUERIES", 2)
    with Store(tmp_path / "c.duckdb") as store:
        ep = queryapi.QueryEndpoint(store, Settings())
        for _ in range(3):
            assert ep._rows("SELECT 41 + 1", None, 10).rows == [(42,)]
        assert len(checks) == 1
        bad = "WITH gone AS (DELETE FROM span_log RETURNING *) SELECT count(*) FROM gone"
        for _ in range(2):
            with pytest.raises(QueryRejected):
                ep._rows(bad, None, 10)
        assert len(checks) == 3
        for q in ("SELECT 1", "SELECT 2", "SELECT 41 + 1"):  # two remembered at most: the first is checked again
            ep._rows(q, None, 10)
        assert len(checks) == 6 and list(ep._checked) == ["SELECT 2", "SELECT 41 + 1"]
