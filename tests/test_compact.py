"""``otel-feedback compact``: a file upgraded by a migration that rebuilt its big table (0004: text to zstd)
keeps the old blocks as free space; compact rewrites it smaller with every row, in order, and refuses while a
server holds the file."""

from __future__ import annotations

from pathlib import Path

import duckdb
from click.testing import CliRunner

from otel_feedback.cli import cli
from otel_feedback.store import SCHEMA_VERSION, Store
from otel_feedback.store.schema import MIGRATIONS, migrate

from .conftest import ServeProcess

SPANS = 20_000


def old_file(path: Path) -> None:
    """A version-3 file (before zstd) with SPANS spans of ~1 KB of varied text each."""
    con = duckdb.connect(str(path))
    try:
        migrate(con, str(path), "0.0.9", MIGRATIONS[:3])
        con.execute(
            f"""
            INSERT INTO span_log (trace_id, span_id, name, kind, start_time, end_time, duration_ms, status_code,
                                  attributes, resource_attributes, received_at)
            SELECT printf('%032x', i // 4 + 1), printf('%016x', i + 1), 'llm', 'CLIENT',
                   TIMESTAMP_NS '2026-11-01' + INTERVAL (i) SECOND, TIMESTAMP_NS '2026-11-01' + INTERVAL (i) SECOND,
                   1.0, 'UNSET',
                   json_object('llm.output', (SELECT string_agg(md5((i * 31 + j)::VARCHAR), ' ')
                                              FROM range(30) r(j))),
                   '{{}}', TIMESTAMP_NS '2026-11-02' + INTERVAL (i) MICROSECOND
            FROM range({SPANS}) t(i)
            """
        )
    finally:
        con.close()


def test_compact_gives_back_the_space_a_migration_freed(tmp_path: Path) -> None:
    db = tmp_path / "big.duckdb"
    old_file(db)
    with Store(db) as store:  # migrates to zstd, which leaves the old table's blocks free
        assert store.query("SELECT max(version) FROM _migrations").rows == [(SCHEMA_VERSION,)]
        order = store.query("SELECT span_id FROM span_log ORDER BY rowid").rows
        by_hour = store.query("SELECT * FROM feedback_by_hour").rows
    before = db.stat().st_size

    result = CliRunner().invoke(cli, ["compact", "--db", str(db)])
    assert result.exit_code == 0, result.output
    # the spans (each a root here, so each in trace_roots too), the _migrations rows and _journal's one row
    assert f"({2 * SPANS + SCHEMA_VERSION + 1:,} rows in" in result.output
    after = db.stat().st_size
    assert after < before * 0.7, (before, after)
    assert not list(tmp_path.glob("*.compacting*"))

    with Store(db) as store:
        assert store.query("SELECT span_id FROM span_log ORDER BY rowid").rows == order
        assert store.query("SELECT * FROM feedback_by_hour").rows == by_hour
        ddl = store.query("SELECT sql FROM duckdb_tables() WHERE table_name = 'span_log'").rows[0][0]
        assert "attributes JSON USING COMPRESSION ZSTD" in ddl


def test_compact_refuses_a_file_a_server_holds(serve_process: ServeProcess) -> None:
    before = serve_process.db.read_bytes()
    result = CliRunner().invoke(cli, ["compact", "--db", str(serve_process.db)])
    assert result.exit_code == 1
    assert "Error:" in result.output and "in use by another process" in result.output
    assert "Traceback" not in result.output
    assert serve_process.db.read_bytes() == before
    assert not list(serve_process.db.parent.glob("*.compacting*"))


def test_compact_names_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["compact", "--db", str(tmp_path / "nope.duckdb")])
    assert result.exit_code == 1 and "does not exist" in result.output
