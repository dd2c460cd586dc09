"""Rewrite a database file without its free space.

DuckDB reuses freed blocks but never shrinks a file. After a migration that rebuilt a large table (0004
moved the long text to zstd) the old table's blocks stay in the file as free space; ``compact`` copies the
database into a new file next to it (``COPY FROM DATABASE``), checks that every table has the same number of
rows, and atomically replaces the old file with it. The original stays open read-only throughout, which
keeps a server from opening it for writing in the meantime; if anything fails, the original is untouched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..errors import SchemaError
from . import Store, _open, _release


@dataclass(frozen=True)
class Compacted:
    path: str
    bytes_before: int
    bytes_after: int
    rows: dict[str, int]


def _size(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _counts(con: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, int]:
    tables = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY table_name", [catalog]
    ).fetchall()
    return {
        t: int(con.execute(f"SELECT count(*) FROM {_ident(catalog)}.{_ident(t)}").fetchall()[0][0]) for (t,) in tables
    }


def compact(path: str | os.PathLike[str]) -> Compacted:
    """Rewrite ``path`` without free blocks. Raises :class:`DatabaseLocked` if a server holds it."""
    p = Path(path)
    if not p.exists():
        raise SchemaError(f"{p} does not exist")
    # A read-write open migrates the file to this version and its close checkpoints (a WAL left by a crash
    # is applied), so the copy below reads one self-contained file.
    Store(str(p)).close()
    before = _size(p)
    tmp = p.with_name(p.name + ".compacting")
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    hold, inst = _open(str(p), read_only=True)  # holds the file against writers until the swap is done
    try:
        con = duckdb.connect(str(tmp))
        try:
            target = con.execute("SELECT current_database()").fetchall()[0][0]
            source = str(p.resolve()).replace("'", "''")
            con.execute(f"ATTACH '{source}' AS otel_feedback_source (READ_ONLY)")
            con.execute(f"COPY FROM DATABASE otel_feedback_source TO {_ident(target)}")
            con.execute("CHECKPOINT")
            want, got = _counts(con, "otel_feedback_source"), _counts(con, target)
            if want != got:
                raise SchemaError(f"compacting {p} failed: the copy has {got} rows per table, the file {want}")
            con.execute("DETACH otel_feedback_source")
        finally:
            con.close()
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        hold.close()
        _release(str(p), inst)
    return Compacted(str(p), before, _size(p), want)
