"""Talking to a running server from Python: SQL results, and sending feedback."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import httpx
import pyarrow as pa

from .errors import InvalidRequest, OtelFeedbackError, QueryError, StoreUnavailable
from .store.query import Result

_log = logging.getLogger(__name__)


def _error(resp: httpx.Response) -> OtelFeedbackError:
    try:
        message = resp.json().get("error") or resp.text
    except ValueError:
        message = resp.text
    if resp.status_code == 503:
        return StoreUnavailable(message)
    return QueryError(message)


def query_server(
    url: str, sql: str, params: dict[str, Any] | None = None, *, max_rows: int | None = None, timeout: float = 60.0
) -> Result:
    """Run read-only SQL on the server at ``url``; the rows as a :class:`Result`."""
    body: dict[str, Any] = {"sql": sql, "params": params or None}
    if max_rows is not None:
        body["max_rows"] = max_rows
    try:
        resp = httpx.post(url.rstrip("/") + "/v1/query", json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise StoreUnavailable(f"cannot reach the server at {url}: {exc}") from None
    if resp.status_code != 200:
        raise _error(resp)
    doc = resp.json()
    return Result(doc["columns"], doc["types"], [tuple(r) for r in doc["rows"]], doc["truncated"])


def arrow_from_server(
    url: str, sql: str, params: dict[str, Any] | None = None, *, max_rows: int | None = None, timeout: float = 300.0
) -> tuple[pa.RecordBatchReader, list[str]]:
    """Run read-only SQL on the server; the result as an Arrow stream and its JSON-typed columns."""
    body: dict[str, Any] = {"sql": sql, "params": params or None, "format": "arrow"}
    if max_rows is not None:
        body["max_rows"] = max_rows
    try:
        resp = httpx.post(url.rstrip("/") + "/v1/query", json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise StoreUnavailable(f"cannot reach the server at {url}: {exc}") from None
    if resp.status_code != 200:
        raise _error(resp)
    reader = pa.ipc.open_stream(resp.content)
    json_cols = (reader.schema.metadata or {}).get(b"otel_feedback.json_columns")
    return reader, json.loads(json_cols) if json_cols else []


def _record(
    trace_id: str | None,
    span_id: str | None,
    *,
    id: str | None,
    attributes: dict[str, Any] | None,
    user_feedback: Any,
    rating: float | None,
    category: str | None,
    comment: str | None,
    name: str | None,
    label: str | None,
    score: float | None,
    explanation: str | None,
    expected: Any,
    error: str | None,
    source_kind: str | None,
    source_id: str | None,
    timestamp: Any,
    target: tuple[str, str] | None,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON record both the HTTP API and ``record_feedback`` take (see README, "Feedback records")."""
    attrs = dict(attributes or {})
    for key, value in (
        ("user_feedback", user_feedback),
        ("user_feedback_rating", rating),
        ("user_feedback_category", category),
        ("user_feedback_comment", comment),
    ):
        if value is not None:
            attrs[key] = value
    record: dict[str, Any] = {"id": id or uuid.uuid4().hex}
    if target is not None:
        record["target"] = {"attribute": target[0], "value": target[1]}
    else:
        if trace_id is not None:
            record["trace_id"] = trace_id
        if span_id is not None:
            record["span_id"] = span_id
    if attrs:
        record["attributes"] = attrs
    for key, value in (
        ("name", name),
        ("label", label),
        ("score", score),
        ("explanation", explanation),
        ("expected", expected),
        ("error", error),
        ("timestamp", timestamp),
        ("metadata", metadata),
    ):
        if value is not None:
            record[key] = value
    source = {k: v for k, v in (("kind", source_kind), ("id", source_id)) if v is not None}
    if source:
        record["source"] = source
    return record


class FeedbackClient:
    """Sends feedback to a running otel-feedback server, from the app that served the answer.

    ``send`` retries safely (each record carries one id, so a retry can never count twice), backs off
    on "slow down" answers, and never raises into the app unless ``raise_errors=True``: failures are
    logged once and ``send`` returns None. ``transport="grpc"`` uses the FeedbackService on the
    OTLP gRPC port (``grpc_target``, default host:4317) instead of HTTP.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        transport: str = "http",
        grpc_target: str | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        raise_errors: bool = False,
    ) -> None:
        from .config import Settings

        if transport not in ("http", "grpc"):
            raise ValueError(f"transport must be 'http' or 'grpc', got {transport!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = (url or Settings.load().url or "http://127.0.0.1:4318").rstrip("/")
        self.transport = transport
        self.grpc_target = grpc_target or f"{httpx.URL(self.url).host}:4317"
        self.timeout = timeout
        self.retries = retries
        self.raise_errors = raise_errors
        self._http: httpx.Client | None = None
        self._channel: Any = None
        self._warned: set[str] = set()

    def send(
        self,
        trace_id: str | None = None,
        span_id: str | None = None,
        *,
        id: str | None = None,
        attributes: dict[str, Any] | None = None,
        user_feedback: Any = None,
        rating: float | None = None,
        category: str | None = None,
        comment: str | None = None,
        name: str | None = None,
        label: str | None = None,
        score: float | None = None,
        explanation: str | None = None,
        expected: Any = None,
        error: str | None = None,
        source_kind: str | None = None,
        source_id: str | None = None,
        timestamp: Any = None,
        target: tuple[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str | None:
        """Send one feedback record; its id once the server has stored it, else None (or raise)."""
        record = _record(
            trace_id, span_id, id=id, attributes=attributes, user_feedback=user_feedback, rating=rating,
            category=category, comment=comment, name=name, label=label, score=score, explanation=explanation,
            expected=expected, error=error, source_kind=source_kind, source_id=source_id, timestamp=timestamp,
            target=target, metadata=metadata,
        )  # fmt: skip
        delay = 0.2
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return self._send_grpc(record) if self.transport == "grpc" else self._send_http(record)
            except _Retry as exc:
                last = exc.error
                if attempt < self.retries:
                    time.sleep(min(exc.after or delay, 5.0))
                    delay *= 2
            except OtelFeedbackError as exc:
                last = exc
                break
            except Exception as exc:  # never raise into the app unless asked
                last = InvalidRequest(f"{type(exc).__name__}: {exc}")
                break
        assert last is not None
        if self.raise_errors:
            raise last
        key = f"{type(last).__name__}: {last}"
        if key not in self._warned and len(self._warned) < 100:
            self._warned.add(key)
            _log.warning("otel-feedback: feedback not sent: %s", key)
        return None

    def _send_http(self, record: dict[str, Any]) -> str:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout)
        try:
            resp = self._http.post(self.url + "/v1/feedback", json={"records": [record]})
        except httpx.HTTPError as exc:
            raise _Retry(StoreUnavailable(f"cannot reach {self.url}: {exc}")) from None
        if resp.status_code == 200:
            return str(resp.json()["ids"][0])
        err = _error(resp)
        if resp.status_code in (429, 502, 503, 504):
            after = resp.headers.get("retry-after")
            raise _Retry(err, float(after) if after and after.isdigit() else None)
        raise InvalidRequest(str(err))

    def _send_grpc(self, record: dict[str, Any]) -> str:
        import grpc

        from ._pb import feedback_pb2

        if self._channel is None:
            self._channel = grpc.insecure_channel(self.grpc_target)
        request = _proto_from_record(record, feedback_pb2)
        call = self._channel.unary_unary(
            "/otel_feedback.v1.FeedbackService/Patch",
            request_serializer=feedback_pb2.PatchRequest.SerializeToString,
            response_deserializer=feedback_pb2.PatchResponse.FromString,
        )
        try:
            return str(call(request, timeout=self.timeout).id)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                raise _Retry(StoreUnavailable(f"{code.name}: {exc.details()}")) from None
            raise InvalidRequest(f"{code.name}: {exc.details()}") from None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Retry(Exception):
    def __init__(self, error: OtelFeedbackError, after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.after = after


def _proto_from_record(record: dict[str, Any], pb: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes

    req = pb.PatchRequest(id=record.get("id", ""))
    if "target" in record:
        req.target.attribute_key = record["target"]["attribute"]
        req.target.attribute_value = str(record["target"]["value"])
    else:
        from .feedback import check_id

        if record.get("trace_id") is not None:
            req.target.trace_id = bytes.fromhex(check_id(record["trace_id"], 32, "trace_id"))
        if record.get("span_id") is not None:
            req.target.span_id = bytes.fromhex(check_id(record["span_id"], 16, "span_id"))
    if record.get("attributes"):
        req.attributes.extend(_encode_attributes(record["attributes"]))
    for key in ("name", "label", "explanation", "error"):
        if record.get(key) is not None:
            setattr(req, key, str(record[key]))
    if record.get("expected") is not None:
        e = record["expected"]
        req.expected = e if isinstance(e, str) else json.dumps(e)
    if record.get("score") is not None:
        req.score = float(record["score"])
    source = record.get("source") or {}
    if source:
        req.source.kind = {"HUMAN": 1, "LLM": 2, "CODE": 3}.get(str(source.get("kind", "")).upper(), 0)
        req.source.id = str(source.get("id") or "")
    if record.get("metadata"):
        req.metadata.extend(_encode_attributes(record["metadata"]))
    if record.get("timestamp") is not None:
        from .feedback import parse_time

        req.time_unix_nano = parse_time(record["timestamp"], "timestamp")
    return req


# -- SQL from Python, on a file or a running server ---------------------------------------------------


def _served_file(url: str, timeout: float) -> str | None:
    """The absolute path of the database file the server at ``url`` writes, or None if none answers."""
    try:
        result = query_server(
            url,
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()",
            timeout=timeout,
        )
    except OtelFeedbackError:
        return None
    return str(result.rows[0][0]) if result.rows and result.rows[0][0] else None


def server_holding(db: str, candidates: list[str], *, timeout: float = 2.0) -> str | None:
    """The first URL in ``candidates`` whose server writes the file ``db``; None if none does.

    Each server is asked which file it holds, so a server on the default port that writes a different
    file is never used by mistake.
    """
    import os

    for url in dict.fromkeys(candidates):
        served = _served_file(url, timeout)
        if served is None:
            continue
        try:
            if os.path.samefile(served, db):
                return url
        except OSError:
            continue
    return None


class Source:
    """Where read-only SQL runs: a database file opened read-only, or a running server (``POST /v1/query``).

    Build one with :func:`open_source`; ``arrow`` and ``rows`` run one statement each; close it when done.
    """

    def __init__(self, *, store: Any = None, url: str | None = None, note: str = "") -> None:
        self.store = store
        self.url = url
        self.note = note
        """Why this source was chosen, when it was not the obvious one (e.g. the file is held by a server)."""

    @property
    def description(self) -> str:
        return f"server {self.url}" if self.url else f"file {self.store.path}"

    def arrow(
        self, sql: str, params: dict[str, Any] | list[Any] | None = None, *, max_rows: int | None = None
    ) -> pa.Table:
        """The result of one statement as an Arrow table (all rows, or the first ``max_rows``)."""
        from .store.query import check_sql

        if self.url is not None:
            # The server takes one SELECT only; checking here gives the precise error type without a round trip.
            return _arrow_table_from_server(self.url, check_sql(sql), params, max_rows=max_rows)
        import duckdb

        statement = check_sql(sql, frozenset(duckdb.StatementType.__members__.values()))

        def work() -> pa.Table:
            cur = self.store.cursor(wait=False)  # store.read waited first
            try:
                rel = cur.sql(statement, params=params or None)
                if rel is None:
                    raise QueryError("the statement returns no rows")
                if max_rows is None:
                    return rel.to_arrow_table()
                reader = rel.to_arrow_reader(min(max_rows + 1, 65_536))
                batches, n = [], 0
                for batch in reader:
                    batches.append(batch)
                    n += batch.num_rows
                    if n >= max_rows:
                        break
                return pa.Table.from_batches(batches, schema=reader.schema).slice(0, max_rows)
            except duckdb.Error as exc:
                raise QueryError(str(exc).strip()) from None
            finally:
                cur.close()

        return self.store.read(work, statement)

    def rows(self, sql: str, params: dict[str, Any] | list[Any] | None = None) -> list[dict[str, Any]]:
        """The result of one statement as a list of dicts (column name -> Python value)."""
        return self.arrow(sql, params).to_pylist()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _arrow_table_from_server(
    url: str, sql: str, params: Any, *, max_rows: int | None = None, timeout: float = 300.0
) -> pa.Table:
    import warnings

    body: dict[str, Any] = {"sql": sql, "params": params or None, "format": "arrow"}
    if max_rows is not None:
        body["max_rows"] = max_rows
    try:
        resp = httpx.post(url.rstrip("/") + "/v1/query", json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise StoreUnavailable(f"cannot reach the server at {url}: {exc}") from None
    if resp.status_code != 200:
        raise _error(resp)
    table = pa.ipc.open_stream(resp.content).read_all()
    if max_rows is None and resp.headers.get("x-otel-feedback-truncated") == "true":
        warnings.warn(
            f"the server at {url} returned only the first {table.num_rows} rows "
            "(its row cap; raise OTEL_FEEDBACK_QUERY_MAX_ROWS on the server, or query the file)",
            stacklevel=3,
        )
    return table


def open_source(db: str | None = None, url: str | None = None) -> Source:
    """Open the place read-only SQL runs.

    * ``url`` given: the server there.
    * ``db`` given: that file, read-only. If a running server holds it (DuckDB lets no other process
      open it meanwhile), the server that writes it is used instead: found among the ``OTEL_FEEDBACK_URL``
      and ``http://127.0.0.1:<OTEL_FEEDBACK_HTTP_PORT>`` (4318), and only if it says it writes that same
      file; else :class:`DatabaseLocked` says to pass ``url``.
    * neither: ``OTEL_FEEDBACK_URL`` if set, else the file ``OTEL_FEEDBACK_DB`` (default
      ``otel-feedback.duckdb``) as above.
    """
    from .config import Settings
    from .errors import DatabaseLocked
    from .store import Store

    if url:
        return Source(url=url.rstrip("/"))
    settings = Settings.load()
    if db is None and settings.url:
        return Source(url=settings.url.rstrip("/"))
    path = db or settings.db
    try:
        return Source(store=Store(path, read_only=True))
    except DatabaseLocked as exc:
        candidates = [u for u in (settings.url, f"http://127.0.0.1:{settings.http_port or 4318}") if u]
        found = server_holding(path, candidates)
        if found is None:
            raise DatabaseLocked(
                f"{exc} (no server at {' or '.join(candidates)} says it writes {path}; pass its URL)"
            ) from None
        return Source(url=found.rstrip("/"), note=f"{path} is held by the running server at {found}; asking it")


def query(
    sql: str,
    params: dict[str, Any] | list[Any] | None = None,
    *,
    db: str | None = None,
    url: str | None = None,
    max_rows: int | None = None,
) -> pa.Table:
    """Run one SQL statement and return the result as a ``pyarrow.Table``; on a file or a running server.

    ``params`` binds ``$name`` (a dict) or ``?`` (a list) placeholders. Where it runs follows
    :func:`open_source`: ``url`` -> that server (read-only SQL, at most its ``OTEL_FEEDBACK_QUERY_MAX_ROWS``
    rows: a warning says when it cut the result); ``db`` -> that file, or the server holding it.

    For pandas: ``query(sql).to_pandas()``; for Polars: ``polars.from_arrow(query(sql))``.
    JSON columns (``attributes``, ...) arrive as JSON text; timestamps are UTC.
    """
    with open_source(db, url) as source:
        return source.arrow(sql, params, max_rows=max_rows)
