"""Read-only SQL: shape check with DuckDB's own parser, bound parameters, a row cap, a time limit."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from ..config import Settings
from ..errors import QueryError, QueryOutOfMemory, QueryRejected, QueryTimeout

READ_STATEMENTS = frozenset({duckdb.StatementType.SELECT})
"""Statement types a query may be (``WITH ... SELECT``, ``VALUES``, ``SUMMARIZE``, ``FROM x`` are SELECTs)."""


@dataclass
class Result:
    """A query's answer: column names and DuckDB type names, the rows, and whether the row cap cut it."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    truncated: bool = False


def check_sql(
    sql: str,
    allowed: frozenset[duckdb.StatementType] = READ_STATEMENTS,
    con: duckdb.DuckDBPyConnection | None = None,
) -> str:
    """The single statement in ``sql`` if it is of an ``allowed`` type; else :class:`QueryRejected`.

    Parsed on ``con`` when given. Without one, duckdb's module-level parser creates its default in-memory
    database on first use (47 ms and 24 MB of RSS), which a server that already has connections should not."""
    if not sql or not sql.strip():
        raise QueryRejected("the query is empty")
    try:
        statements = (con or duckdb).extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(clean_error(exc)) from None
    if len(statements) != 1:
        raise QueryRejected(f"send exactly one SQL statement; got {len(statements)}")
    st = statements[0]
    kinds = ", ".join(sorted(t.name for t in allowed))
    try:
        kind = st.type
    except ValueError:
        # A statement type newer than the Python package's enum (UPDATE EXTENSIONS): never a SELECT.
        raise QueryRejected(f"only {kinds} statements are allowed here; got a statement of another type") from None
    if kind not in allowed:
        raise QueryRejected(f"only {kinds} statements are allowed here; got {kind.name}")
    return st.query


def clean_error(exc: BaseException) -> str:
    """DuckDB's message without the exception class prefix noise, on one line where it can be."""
    text = str(exc).strip()
    if isinstance(exc, duckdb.OutOfMemoryException):
        # DuckDB's advice (SET memory_limit, SET threads) cannot be followed on a server's locked configuration
        first = text.splitlines()[0] if text else "Out of Memory Error"
        return (
            f"{first}. The query needs more memory than DuckDB may use here: for `otel-feedback serve` raise "
            f"OTEL_FEEDBACK_MEMORY_LIMIT (default {Settings.memory_limit}); bigger aggregations and sorts spill to "
            "<db>.tmp, but not every operator can."
        )
    return text


def query_error(exc: duckdb.Error) -> QueryError:
    """DuckDB's failure to run a query as our error: :class:`QueryOutOfMemory` when it ran out of memory (a
    server runs it again with more), else :class:`QueryError`."""
    if isinstance(exc, duckdb.OutOfMemoryException):
        return QueryOutOfMemory(clean_error(exc))
    return QueryError(clean_error(exc))


def parse_param(value: str) -> Any:
    """A ``--param`` value from the command line: integers and decimals become numbers, else text."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


class _Interrupter:
    """Interrupts ``con`` if the query is still running after ``timeout_ms``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_ms: int | None) -> None:
        self.fired = False
        self._timer = None
        if timeout_ms:
            self._timer = threading.Timer(timeout_ms / 1000, self._fire, args=(con,))
            self._timer.daemon = True

    def _fire(self, con: duckdb.DuckDBPyConnection) -> None:
        self.fired = True
        con.interrupt()

    def __enter__(self) -> _Interrupter:
        if self._timer:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer:
            self._timer.cancel()


def run(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    max_rows: int | None = None,
    timeout_ms: int | None = None,
    timeout_setting: str = "OTEL_FEEDBACK_QUERY_TIMEOUT_MS",
) -> Result:
    """Run one statement on ``con`` (a cursor of its own) and fetch up to ``max_rows`` rows."""
    with _Interrupter(con, timeout_ms) as guard:
        try:
            cur = con.execute(sql, params or None)
            columns = [d[0] for d in cur.description] if cur.description else []
            types = [str(d[1]) for d in cur.description] if cur.description else []
            if max_rows is None:
                rows = cur.fetchall()
                truncated = False
            else:
                rows = cur.fetchmany(max_rows + 1)
                truncated = len(rows) > max_rows
                rows = rows[:max_rows]
        except duckdb.InterruptException:
            raise QueryTimeout(
                f"the query ran longer than {timeout_ms} ms and was stopped (raise {timeout_setting})"
            ) from None
        except duckdb.Error as exc:
            if guard.fired:
                raise QueryTimeout(
                    f"the query ran longer than {timeout_ms} ms and was stopped (raise {timeout_setting})"
                ) from None
            raise query_error(exc) from None
    return Result(columns=columns, types=types, rows=rows, truncated=truncated)


def stream(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    chunk_rows: int = 10_000,
) -> tuple[list[str], list[str], Iterator[list[tuple[Any, ...]]]]:
    """Columns, types and an iterator of row chunks, for output too large to hold at once.

    The cursor ``con`` is closed when the iterator is exhausted, closed, or the query fails.
    """
    try:
        cur = con.execute(sql, params or None)
    except duckdb.Error as exc:
        con.close()
        raise QueryError(clean_error(exc)) from None
    columns = [d[0] for d in cur.description] if cur.description else []
    types = [str(d[1]) for d in cur.description] if cur.description else []

    def chunks() -> Iterator[list[tuple[Any, ...]]]:
        try:
            while True:
                try:
                    rows = cur.fetchmany(chunk_rows)
                except duckdb.Error as exc:
                    raise QueryError(clean_error(exc)) from None
                if not rows:
                    return
                yield rows
        finally:
            con.close()

    return columns, types, chunks()
