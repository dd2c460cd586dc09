"""``otel-feedback query`` and ``export`` through click's CliRunner, on a small dataset with known values.

Exit codes and the exact ``Error:`` line are asserted; outputs are compared in full.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otel_feedback import __version__
from otel_feedback.cli import cli
from otel_feedback.decode import decode_traces
from otel_feedback.store import Store

T0 = 1_750_000_000_000_000_000
"""2025-06-15T15:06:40Z"""
TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT = "b7ad6b7169203331"
CHILD = "00f067aa0ba902b7"


def kv(key: str, value: Any) -> KeyValue:
    v = AnyValue()
    if isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int):
        v.int_value = value
    elif isinstance(value, float):
        v.double_value = value
    else:
        v.string_value = value
    return KeyValue(key=key, value=v)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two spans of one trace: a root and a child with a comma, quotes and a tab in its texts; the
    child's start time has nanosecond digits."""
    path = tmp_path_factory.mktemp("cli") / "cli.duckdb"
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", "cli-test")]),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name="cli.scope", version="1"),
                        spans=[
                            Span(
                                trace_id=bytes.fromhex(TRACE),
                                span_id=bytes.fromhex(ROOT),
                                name="answer",
                                kind=2,
                                start_time_unix_nano=T0,
                                end_time_unix_nano=T0 + 1_500_000,
                                status=Status(code=1),
                                attributes=[kv("input.value", "hi"), kv("n", 3)],
                            ),
                            Span(
                                trace_id=bytes.fromhex(TRACE),
                                span_id=bytes.fromhex(CHILD),
                                parent_span_id=bytes.fromhex(ROOT),
                                name='llm, "quoted"',
                                kind=3,
                                start_time_unix_nano=T0 + 100_000_123,
                                end_time_unix_nano=T0 + 350_000_000,
                                status=Status(code=2, message="rate\tlimited"),
                                attributes=[kv("ok", False), kv("temp", 0.5)],
                            ),
                        ],
                    )
                ],
            )
        ]
    )
    decoded = decode_traces(request, received_at_ns=T0 + 10**9)
    assert decoded.rejected == 0
    with Store(path) as store:
        assert store.append({"span_log": decoded.table}) == 2
    yield path


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(cli, list(args), input=input)


SQL = """SELECT span_id, name, kind, parent_span_id IS NULL AS is_root, duration_ms, status_message,
       epoch_ns(start_time) AS start_ns, end_time, attributes
FROM spans ORDER BY start_time"""

EXPECTED: dict[str, str] = {
    "table": (
        "+------------------+---------------+--------+---------+-------------+----------------+"
        "---------------------+----------------------------+----------------------------+\n"
        "| span_id          | name          | kind   | is_root | duration_ms | status_message |"
        " start_ns            | end_time                   | attributes                 |\n"
        "+------------------+---------------+--------+---------+-------------+----------------+"
        "---------------------+----------------------------+----------------------------+\n"
        "| b7ad6b7169203331 | answer        | SERVER | true    | 1.5         | NULL           |"
        ' 1750000000000000000 | 2025-06-15T15:06:40.001500 | {"input.value":"hi","n":3} |\n'
        '| 00f067aa0ba902b7 | llm, "quoted" | CLIENT | false   | 249.999877  | rate limited   |'
        ' 1750000000100000123 | 2025-06-15T15:06:40.350000 | {"ok":false,"temp":0.5}    |\n'
        "+------------------+---------------+--------+---------+-------------+----------------+"
        "---------------------+----------------------------+----------------------------+\n"
        "2 rows\n"
    ),
    "csv": (
        "span_id,name,kind,is_root,duration_ms,status_message,start_ns,end_time,attributes\n"
        "b7ad6b7169203331,answer,SERVER,true,1.5,,1750000000000000000,2025-06-15T15:06:40.001500,"
        '"{""input.value"":""hi"",""n"":3}"\n'
        '00f067aa0ba902b7,"llm, ""quoted""",CLIENT,false,249.999877,rate\tlimited,1750000000100000123,'
        '2025-06-15T15:06:40.350000,"{""ok"":false,""temp"":0.5}"\n'
    ),
    "tsv": (
        "span_id\tname\tkind\tis_root\tduration_ms\tstatus_message\tstart_ns\tend_time\tattributes\n"
        "b7ad6b7169203331\tanswer\tSERVER\ttrue\t1.5\t\t1750000000000000000\t2025-06-15T15:06:40.001500\t"
        '"{""input.value"":""hi"",""n"":3}"\n'
        '00f067aa0ba902b7\t"llm, ""quoted"""\tCLIENT\tfalse\t249.999877\t"rate\tlimited"\t1750000000100000123\t'
        '2025-06-15T15:06:40.350000\t"{""ok"":false,""temp"":0.5}"\n'
    ),
    "json": (
        '[{"span_id":"b7ad6b7169203331","name":"answer","kind":"SERVER","is_root":true,"duration_ms":1.5,'
        '"status_message":null,"start_ns":1750000000000000000,"end_time":"2025-06-15T15:06:40.001500",'
        '"attributes":{"input.value":"hi","n":3}},\n'
        '{"span_id":"00f067aa0ba902b7","name":"llm, \\"quoted\\"","kind":"CLIENT","is_root":false,'
        '"duration_ms":249.999877,"status_message":"rate\\tlimited","start_ns":1750000000100000123,'
        '"end_time":"2025-06-15T15:06:40.350000","attributes":{"ok":false,"temp":0.5}}]\n'
    ),
    "ndjson": (
        '{"span_id":"b7ad6b7169203331","name":"answer","kind":"SERVER","is_root":true,"duration_ms":1.5,'
        '"status_message":null,"start_ns":1750000000000000000,"end_time":"2025-06-15T15:06:40.001500",'
        '"attributes":{"input.value":"hi","n":3}}\n'
        '{"span_id":"00f067aa0ba902b7","name":"llm, \\"quoted\\"","kind":"CLIENT","is_root":false,'
        '"duration_ms":249.999877,"status_message":"rate\\tlimited","start_ns":1750000000100000123,'
        '"end_time":"2025-06-15T15:06:40.350000","attributes":{"ok":false,"temp":0.5}}\n'
    ),
}


@pytest.mark.parametrize("fmt", ["table", "csv", "tsv", "json", "ndjson"])
def test_query_in_every_format(db: Path, fmt: str) -> None:
    result = run("query", "--db", str(db), "--format", fmt, SQL)
    assert result.exit_code == 0, result.output
    assert result.stdout == EXPECTED[fmt]
    assert result.stderr == ""


def test_the_structured_formats_parse_back_to_the_same_rows(db: Path) -> None:
    """CSV/TSV through the csv module and JSON/NDJSON through a JSON parser all give the same cells."""
    as_json = orjson.loads(run("query", "--db", str(db), "-f", "json", SQL).stdout)
    as_ndjson = [orjson.loads(line) for line in run("query", "--db", str(db), "-f", "ndjson", SQL).stdout.splitlines()]
    assert as_json == as_ndjson
    assert [r["attributes"] for r in as_json] == [{"input.value": "hi", "n": 3}, {"ok": False, "temp": 0.5}]
    csv_rows = list(csv.DictReader(io.StringIO(run("query", "--db", str(db), "-f", "csv", SQL).stdout)))
    tsv_rows = list(csv.DictReader(io.StringIO(run("query", "--db", str(db), "-f", "tsv", SQL).stdout), delimiter="\t"))
    assert csv_rows == tsv_rows
    assert [r["name"] for r in csv_rows] == ["answer", 'llm, "quoted"']
    assert [r["status_message"] for r in csv_rows] == ["", "rate\tlimited"]
    assert [orjson.loads(r["attributes"]) for r in csv_rows] == [r["attributes"] for r in as_json]


def test_table_is_the_default_format(db: Path) -> None:
    assert run("query", "--db", str(db), SQL).stdout == EXPECTED["table"]


def test_sql_from_stdin(db: Path) -> None:
    result = run("query", "--db", str(db), "-f", "csv", "-", input=SQL)
    assert result.exit_code == 0, result.output
    assert result.stdout == EXPECTED["csv"]


def test_bound_parameters(db: Path) -> None:
    sql = "SELECT name FROM spans WHERE duration_ms > $min_ms AND kind = $kind AND trace_id = $trace"
    result = run(
        "query", "--db", str(db), "-f", "csv", "-p", "min_ms", "100", "-p", "kind", "CLIENT", "-p", "trace", TRACE, sql
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == 'name\n"llm, ""quoted"""\n'
    # the value is bound, never spliced into the SQL: a quote in it is just a character
    result = run(
        "query",
        "--db",
        str(db),
        "-f",
        "csv",
        "-p",
        "n",
        "answer' OR '1'='1",
        "SELECT count(*) AS n FROM spans WHERE name = $n",
    )
    assert result.stdout == "n\n0\n"


def test_numbers_bind_as_numbers(db: Path) -> None:
    result = run(
        "query",
        "--db",
        str(db),
        "-f",
        "json",
        "-p",
        "i",
        "42",
        "-p",
        "f",
        "2.5",
        "-p",
        "s",
        "4x",
        "SELECT $i AS i, $f AS f, $s AS s",
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == [{"i": 42, "f": 2.5, "s": "4x"}]


def test_max_rows(db: Path) -> None:
    result = run("query", "--db", str(db), "-f", "csv", "--max-rows", "1", "SELECT span_id FROM spans ORDER BY span_id")
    assert result.stdout == f"span_id\n{CHILD}\n"


def test_db_from_the_environment(db: Path) -> None:
    result = run("query", "-f", "csv", "SELECT count(*) AS n FROM spans", env={"OTEL_FEEDBACK_DB": str(db)})
    assert result.exit_code == 0, result.output
    assert result.stdout == "n\n2\n"


def test_unknown_column_is_one_error_line_and_exit_code_1(db: Path) -> None:
    result = run("query", "--db", str(db), "SELECT nope FROM spans")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == 'Error: Binder Error: Referenced column "nope" not found in FROM clause!'
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an exception escaping


def test_two_statements_are_refused(db: Path) -> None:
    result = run("query", "--db", str(db), "SELECT 1; SELECT 2")
    assert result.exit_code == 1
    assert result.stderr == "Error: send exactly one SQL statement; got 2\n"


def test_query_cannot_write(db: Path) -> None:
    result = run("query", "--db", str(db), "DELETE FROM span_log")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "read-only" in result.stderr
    assert "Traceback" not in result.output
    assert run("query", "--db", str(db), "-f", "csv", "SELECT count(*) AS n FROM span_log").stdout == "n\n2\n"


def test_missing_database_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.duckdb"
    result = run("query", "--db", str(missing), "SELECT 1")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {missing} does not exist (nothing has been written there yet)\n"
    assert not missing.exists()


EXPORT_SQL = "SELECT span_id, name, start_time, duration_ms, attributes, status_message FROM spans ORDER BY start_time"


def expected_arrow(db: Path) -> pa.Table:
    with Store(db, read_only=True) as store:
        return store.arrow(EXPORT_SQL)


def test_export_parquet(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad answers.parquet"
    result = run("export", "--db", str(db), "-o", str(out), EXPORT_SQL)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote 2 rows to {out} (parquet)\n"
    table = pq.read_table(out)
    expected = expected_arrow(db)
    assert table.schema.field("start_time").type == pa.timestamp("ns")
    assert table.column_names == expected.column_names
    for name in expected.column_names:
        assert table.column(name).combine_chunks().equals(expected.column(name).combine_chunks()), name
    # nanoseconds survive (pyarrow's datetimes would not show them, so compare the raw integers)
    assert table.column("start_time").cast(pa.int64()).to_pylist() == [T0, T0 + 100_000_123]
    assert not list(tmp_path.glob("*.partial"))


def test_export_csv(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    result = run("export", "--db", str(db), "-o", str(out), EXPORT_SQL)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(newline="")))
    assert rows == [
        {
            "span_id": ROOT,
            "name": "answer",
            "start_time": "2025-06-15 15:06:40.000000000",
            "duration_ms": "1.5",
            "attributes": '{"input.value":"hi","n":3}',
            "status_message": "",
        },
        {
            "span_id": CHILD,
            "name": 'llm, "quoted"',
            "start_time": "2025-06-15 15:06:40.100000123",
            "duration_ms": "249.999877",
            "attributes": '{"ok":false,"temp":0.5}',
            "status_message": "rate\tlimited",
        },
    ]


def test_export_jsonl_with_a_parameter(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.jsonl"
    result = run(
        "export",
        "--db",
        str(db),
        "-o",
        str(out),
        "-p",
        "kind",
        "CLIENT",
        "SELECT span_id, start_time, attributes, status_message FROM spans WHERE kind = $kind",
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote 1 row to {out} (jsonl)\n"
    lines = out.read_text().splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {
            "span_id": CHILD,
            "start_time": "2025-06-15T15:06:40.100000123",
            "attributes": {"ok": False, "temp": 0.5},
            "status_message": "rate\tlimited",
        },
    ]


def test_export_sql_from_stdin_with_an_explicit_format(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.data"
    result = run(
        "export",
        "--db",
        str(db),
        "-o",
        str(out),
        "--format",
        "jsonl",
        "-",
        input="SELECT span_id FROM spans ORDER BY span_id",
    )
    assert result.exit_code == 0, result.output
    assert out.read_text() == f'{{"span_id":"{CHILD}"}}\n{{"span_id":"{ROOT}"}}\n'


def test_export_unknown_extension(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    result = run("export", "--db", str(db), "-o", str(out), EXPORT_SQL)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: cannot tell the format of {str(out)!r} from its extension; use .parquet, .csv or .jsonl "
        "(or --format)\n"
    )
    assert not out.exists()


def test_export_error_leaves_no_file(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    result = run("export", "--db", str(db), "-o", str(out), "SELECT nope FROM spans")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == 'Error: Binder Error: Referenced column "nope" not found in FROM clause!'
    assert list(tmp_path.iterdir()) == []


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"otel-feedback, version {__version__}\n"
