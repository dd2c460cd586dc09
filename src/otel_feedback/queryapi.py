"""``POST /v1/query`` (and ``GET /v1/query?sql=...``): read-only SQL against the running server's file.

Layers, each enough on its own for most escapes:
1. DuckDB's own parser: exactly one statement, and it must be a SELECT (``check_sql``); then its syntax
   tree (``json_serialize_sql``) must hold only reading query nodes - a SELECT may carry a
   data-modifying CTE (``WITH x AS (DELETE ... RETURNING *) SELECT ...``) - and call no function
   with side effects (``checkpoint()``, ``truncate_duckdb_logs()``, ...) (``check_read_only``);
2. the statement runs inside a transaction that is always rolled back, so nothing it could
   change survives;
3. the engine is locked down at server start (``enable_external_access=false`` - no files, no
   ATTACH, no INSTALL - which DuckDB refuses to turn back on while the database is open). The configuration
   is not locked (the server trims DuckDB's cache by changing ``memory_limit``, :mod:`.store.memory`): a SET
   is refused by layer 1, as it is not a SELECT;
4. a row cap (``truncated``) and a time limit (interrupt; the error names the setting).

Answers JSON (default), CSV, NDJSON or Arrow IPC stream, chosen by ``format`` or the Accept header.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import orjson
import pyarrow as pa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .config import Settings
from .errors import InvalidRequest, QueryRejected
from .output import dumps, iter_delimited, iter_ndjson
from .store import Store
from .store.query import check_sql, query_error, run

ARROW_STREAM = "application/vnd.apache.arrow.stream"
FORMATS = {"json": "application/json", "csv": "text/csv", "ndjson": "application/x-ndjson", "arrow": ARROW_STREAM}
_ACCEPT = {v: k for k, v in FORMATS.items()}
JSON_COLUMNS = b"otel_feedback.json_columns"
"""Arrow schema metadata key: a JSON list of the result's columns that hold JSON text (DuckDB's JSON type)."""

READ_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
"""Query node types a query's syntax tree may hold (DELETE/INSERT/UPDATE/MERGE nodes write)."""

SIDE_EFFECT_FUNCTIONS = frozenset(
    {
        "checkpoint",
        "force_checkpoint",
        "truncate_duckdb_logs",
        "enable_logging",
        "disable_logging",
        "enable_profiling",
        "disable_profiling",
        "write_log",
        "nextval",
        "setval",
        "json_execute_serialized_sql",
        "query",
        "create_external_resource",
        "destroy_external_resource",
        "register_external_resource",
        "deregister_external_resource",
        "register_external_resource_type",
        "arrow_scan",
        "arrow_scan_dumb",
        "python_arrow_scan",
        "pandas_scan",
        "python_map_function",
        "duckdb_secrets",
        "which_secret",
    }
)
"""Functions a query may not call: they change the database or its state, run SQL given as text (which
this check cannot see), read process memory by pointer, or look at stored secrets."""


def check_read_only(cur: Any, sql: str) -> None:
    """:class:`QueryRejected` unless the SELECT ``sql`` only reads, judged on DuckDB's own syntax tree."""
    rows = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    tree = orjson.loads(rows[0][0]) if rows and rows[0][0] else {"error": True, "error_message": "no syntax tree"}
    if tree.get("error"):
        raise QueryRejected(f"the query cannot be checked as read-only: {tree.get('error_message')}")
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            kind = node.get("type")
            is_query_node = "cte_map" in node or (isinstance(kind, str) and kind.endswith("_QUERY_NODE"))
            if is_query_node and kind not in READ_QUERY_NODES:
                what = str(kind).removesuffix("_QUERY_NODE").removesuffix("_NODE")
                raise QueryRejected(f"queries may only read; this one contains a {what} (data-modifying WITH)")
            name = node.get("function_name")
            if isinstance(name, str) and name.lower() in SIDE_EFFECT_FUNCTIONS:
                raise QueryRejected(
                    f"queries may not call {name}() (it changes state, runs other SQL or reads secrets)"
                )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _format(request: Request, given: Any) -> str:
    if given is not None:
        if given not in FORMATS:
            raise InvalidRequest(f"format: must be one of {', '.join(FORMATS)}, got {given!r}")
        return str(given)
    for part in request.headers.get("accept", "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in _ACCEPT:
            return _ACCEPT[media]
    return "json"


CHECKED_QUERIES = 256
"""How many query texts that passed the read-only checks are remembered (their statement), so that a client that
sends the same SQL again (a dashboard, a poller: the benchmark's feedback-to-visible lookup) is not parsed and
serialised again: ~0.4 ms of a query that answers in ~1.3 ms in-process."""


class QueryEndpoint:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._checked: OrderedDict[str, str] = OrderedDict()
        self._checked_lock = threading.Lock()

    def _statement(self, cur: Any, sql: str) -> str:
        """The checked statement of ``sql`` (layer 1): from the texts checked before, else checked now. The checks
        depend on the text alone (DuckDB's parser and syntax tree, not the catalog)."""
        with self._checked_lock:
            statement = self._checked.get(sql)
            if statement is not None:
                self._checked.move_to_end(sql)
                return statement
        statement = check_sql(sql, con=cur)  # parsed on this cursor: no default in-memory database
        check_read_only(cur, statement)
        with self._checked_lock:
            self._checked[sql] = statement
            while len(self._checked) > CHECKED_QUERIES:
                self._checked.popitem(last=False)
        return statement

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":
            q = request.query_params
            body: dict[str, Any] = {"sql": q.get("sql"), "format": q.get("format")}
            if q.get("max_rows"):
                body["max_rows"] = q.get("max_rows")
            body["params"] = {k[2:]: v for k, v in q.items() if k.startswith("p.")}
        else:
            from .api import parse_json, read_body

            body = parse_json(await read_body(request, 1024 * 1024))
            if not isinstance(body, dict):
                raise InvalidRequest('body: expected {"sql": "...", "params": {...}}')
            unknown = sorted(set(body) - {"sql", "params", "format", "max_rows"})
            if unknown:
                raise InvalidRequest(f"body: unknown field {unknown[0]!r}; allowed: format, max_rows, params, sql")
        sql = body.get("sql")
        if not isinstance(sql, str):
            raise InvalidRequest("sql: required, a string")
        params = body.get("params") or None
        if params is not None and not isinstance(params, dict | list):
            raise InvalidRequest("params: must be an object of name -> value (or a list for ? placeholders)")
        fmt = _format(request, body.get("format"))
        cap = self.settings.query_max_rows
        max_rows = body.get("max_rows", cap)
        try:
            max_rows = int(max_rows)
        except (TypeError, ValueError):
            raise InvalidRequest(f"max_rows: must be an integer, got {max_rows!r}") from None
        if max_rows < 1:
            raise InvalidRequest("max_rows: must be >= 1")
        max_rows = min(max_rows, cap)
        if fmt == "arrow":
            table, truncated = await run_in_threadpool(self._arrow, sql, params, max_rows)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            return Response(
                sink.getvalue().to_pybytes(),
                200,
                {"X-Otel-Feedback-Truncated": str(truncated).lower()},
                media_type=ARROW_STREAM,
            )
        result = await run_in_threadpool(self._rows, sql, params, max_rows)
        headers = {"X-Otel-Feedback-Truncated": str(result.truncated).lower()}
        if fmt == "json":
            json_idx = [i for i, t in enumerate(result.types) if t == "JSON"]
            rows = [_json_cells(r, json_idx) for r in result.rows] if json_idx else result.rows
            payload = {
                "ok": True,
                "columns": result.columns,
                "types": result.types,
                "rows": rows,
                "row_count": len(result.rows),
                "truncated": result.truncated,
            }
            return Response(dumps(payload), 200, headers, media_type="application/json")
        if fmt == "csv":
            text = "".join(iter_delimited(result.columns, [result.rows]))
            return Response(text, 200, headers, media_type="text/csv")
        data = b"".join(iter_ndjson(result.columns, result.types, [result.rows]))
        return Response(data, 200, headers, media_type="application/x-ndjson")

    def _run_rolled_back(self, sql: str, fn: Any) -> Any:
        """``fn(cursor, statement)`` on the one checked statement in ``sql``, in a transaction rolled back after;
        as a query of the store (run again with the whole memory limit if it ran out within the target)."""

        def work() -> Any:
            cur = self.store.cursor(wait=False)  # store.read waited first
            try:
                statement = self._statement(cur, sql)
                cur.execute("BEGIN TRANSACTION")
                try:
                    return fn(cur, statement)
                finally:
                    try:
                        cur.execute("ROLLBACK")
                    except Exception:
                        pass
            finally:
                cur.close()

        return self.store.read(work, sql)

    def _rows(self, sql: str, params: Any, max_rows: int) -> Any:
        return self._run_rolled_back(
            sql, lambda cur, st: run(cur, st, params, max_rows=max_rows, timeout_ms=self.settings.query_timeout_ms)
        )

    def _arrow(self, sql: str, params: Any, max_rows: int) -> tuple[pa.Table, bool]:
        def fetch(cur: Any, statement: str) -> tuple[pa.Table, bool]:
            import duckdb

            from .errors import QueryTimeout
            from .store.query import _Interrupter

            with _Interrupter(cur, self.settings.query_timeout_ms) as guard:
                try:
                    rel = cur.sql(statement, params=params)
                    json_cols = [n for n, t in zip(rel.columns, rel.types, strict=True) if str(t) == "JSON"]
                    reader = rel.to_arrow_reader(min(max_rows + 1, 65_536))
                    batches = []
                    n = 0
                    for batch in reader:
                        batches.append(batch)
                        n += batch.num_rows
                        if n > max_rows:
                            break
                    table = pa.Table.from_batches(batches, schema=reader.schema)
                except duckdb.Error as exc:
                    if guard.fired or isinstance(exc, duckdb.InterruptException):
                        raise QueryTimeout(
                            f"the query ran longer than {self.settings.query_timeout_ms} ms and was stopped "
                            "(raise OTEL_FEEDBACK_QUERY_TIMEOUT_MS)"
                        ) from None
                    raise query_error(exc) from None
            if json_cols:  # Arrow has no JSON type here: name the columns that hold JSON text
                table = table.replace_schema_metadata(
                    {**(table.schema.metadata or {}), JSON_COLUMNS: orjson.dumps(json_cols)}
                )
            return table.slice(0, max_rows), table.num_rows > max_rows

        return self._run_rolled_back(sql, fetch)


def _json_cells(row: tuple[Any, ...], idx: list[int]) -> list[Any]:
    out = list(row)
    for i in idx:
        if isinstance(out[i], str):
            try:
                out[i] = orjson.loads(out[i])
            except orjson.JSONDecodeError:
                pass
    return out
