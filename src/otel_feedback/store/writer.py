"""The single write path: one thread owns the read-write DuckDB connection; everyone else enqueues.

Callers hand :meth:`Writer.submit` a mapping of table name -> Arrow table and get a
:class:`concurrent.futures.Future` that completes once those rows are committed (durable: a
committed DuckDB transaction is in the WAL and survives ``kill -9``). The worker takes as many
queued jobs as fit in ``commit_rows`` and appends them all in one transaction (group commit), so
the cost of a commit is shared by every request that arrived while the previous one ran.

The queue is bounded in rows: when it is full, ``submit`` raises :class:`QueueFull` at once
(retryable), so memory stays bounded and clients back off. If a group fails, each job in it is
retried alone so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from ..errors import InvalidRequest, QueueFull, StoreUnavailable, WriteFailed

_log = logging.getLogger(__name__)

TABLE_ORDER = ("span_log", "log_records", "feedback_log", "feedback_config")
"""Tables the writer appends to, in the order it writes them within a transaction."""

_TRUSTED_JSON = {
    "span_log": ("attributes", "resource_attributes", "scope_attributes", "events", "links", "feedback_attributes"),
    "log_records": ("body", "attributes", "resource_attributes"),
    "feedback_log": ("attributes", "expected", "metadata"),
}
"""JSON columns that only our own code writes, with orjson (``feedback.to_table``, ``decode``) or
``_otlp_fast.c`` (which tests hold to orjson's output byte for byte), so the text is valid JSON by
construction: handed to DuckDB as Arrow ``arrow.json``, which spares DuckDB parsing every value again to check
it (about 2 us a span). A client's raw text never reaches these columns unparsed."""

_JSON_TYPE = pa.json_(pa.string())


def _for_duckdb(name: str, table: pa.Table) -> pa.Table:
    """One chunk per column where it fits (DuckDB scans one long Arrow array faster than many request-sized
    ones: 2-3 us a span), with trusted JSON columns typed as JSON."""
    if table.nbytes < 1 << 30:  # string offsets are 32-bit: one chunk holds at most 2 GiB
        table = table.combine_chunks()
    for column in _TRUSTED_JSON.get(name, ()):
        i = table.schema.get_field_index(column)
        if i >= 0 and table.schema.field(i).type == pa.string():
            chunks = [pa.ExtensionArray.from_storage(_JSON_TYPE, c) for c in table.column(i).chunks]
            table = table.set_column(i, column, pa.chunked_array(chunks, _JSON_TYPE))
    return table


_PERMANENT = (
    duckdb.ConstraintException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.BinderException,
    duckdb.TypeMismatchException,
)


def classify(exc: BaseException) -> Exception:
    """A DuckDB failure as one of our errors: bad data is permanent, anything else retryable."""
    if isinstance(exc, _PERMANENT):
        return InvalidRequest(f"the database refused the rows: {exc}")
    return WriteFailed(f"writing to DuckDB failed: {exc}")


@dataclass
class WriterStats:
    """Counters since the writer started (read them without locking; they are monotonic)."""

    commits: int = 0
    rows: int = 0
    jobs: int = 0
    failed_jobs: int = 0
    rejected_full: int = 0
    commit_seconds: float = 0.0


class _Job:
    __slots__ = ("fn", "future", "rows", "tables")

    def __init__(
        self,
        tables: Mapping[str, pa.Table] | None,
        rows: int,
        fn: Callable[[duckdb.DuckDBPyConnection], Any] | None = None,
    ) -> None:
        self.tables = tables
        self.rows = rows
        self.fn = fn
        self.future: Future[Any] = Future()


class Writer:
    """Owns ``con`` from :meth:`start` until :meth:`close`; no other thread may use it."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, queue_rows: int, commit_rows: int) -> None:
        if queue_rows < 1:
            raise ValueError(f"queue_rows must be >= 1, got {queue_rows}")
        if not 1 <= commit_rows <= queue_rows:
            raise ValueError(f"commit_rows must be between 1 and queue_rows ({queue_rows}), got {commit_rows}")
        self._con = con
        self._queue_rows = queue_rows
        self._commit_rows = commit_rows
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._in_flight = 0
        self._closed = False
        row = con.execute("SELECT coalesce(max(seq), 0) FROM feedback_log").fetchone()
        self._next_seq = int(row[0]) + 1 if row else 1
        self.stats = WriterStats()
        self._thread = threading.Thread(target=self._run, name="otel-feedback-writer", daemon=True)
        self._thread.start()

    # -- callers -------------------------------------------------------------------------------

    def submit(self, tables: Mapping[str, pa.Table]) -> Future[int]:
        """Queue rows for the next commit; the future's result is the number of rows committed.

        Raises :class:`QueueFull` (retryable) when the queue cannot take them now, and
        :class:`StoreUnavailable` when the writer is closed.
        """
        for name in tables:
            if name not in TABLE_ORDER:
                raise ValueError(f"unknown table {name!r}; the writer appends to {', '.join(TABLE_ORDER)}")
        rows = sum(t.num_rows for t in tables.values())
        job = _Job({k: v for k, v in tables.items() if v.num_rows}, rows)
        if rows == 0:
            job.future.set_result(0)
            return job.future
        self._enqueue(job)
        return job.future

    def call(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Future[Any]:
        """Run ``fn(connection)`` on the writer thread inside its own transaction."""
        job = _Job(None, 0, fn)
        self._enqueue(job)
        return job.future

    def check_room(self, rows: int) -> None:
        """Raise :class:`QueueFull` now if ``rows`` would not fit, so a receiver can refuse a request
        before spending CPU and memory decoding it (a hint: ``submit`` decides for real)."""
        with self._cond:
            self._refuse_if_full(rows)

    def _refuse_if_full(self, rows: int) -> None:
        # A request larger than the whole queue is still taken when the queue is empty, else it
        # could never succeed.
        if self._queued_rows and self._queued_rows + rows > self._queue_rows:
            self.stats.rejected_full += 1
            raise QueueFull(
                f"the write queue is full ({self._queued_rows} rows waiting, "
                f"OTEL_FEEDBACK_QUEUE_ROWS={self._queue_rows}); retry later"
            )

    def _enqueue(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                raise StoreUnavailable("the store is closed; nothing more can be written")
            self._refuse_if_full(job.rows)
            self._queue.append(job)
            self._queued_rows += job.rows
            self._cond.notify_all()

    @property
    def queued_rows(self) -> int:
        """Rows accepted but not yet committed."""
        return self._queued_rows

    def flush(self, timeout_millis: float | None = None) -> bool:
        """Wait until everything submitted before this call is committed (or failed); False on timeout."""
        deadline = None if timeout_millis is None else time.monotonic() + timeout_millis / 1000
        with self._cond:
            while self._queue or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout_millis: float | None = 30_000) -> bool:
        """Refuse new work, commit what is queued, stop the thread. Idempotent. False if it did not finish
        in time (then the connection must not be closed)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(None if timeout_millis is None else timeout_millis / 1000)
        return not self._thread.is_alive()

    # -- the worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                jobs = [self._queue.popleft()]
                if jobs[0].fn is None:
                    rows = jobs[0].rows
                    while self._queue and self._queue[0].fn is None and rows + self._queue[0].rows <= self._commit_rows:
                        job = self._queue.popleft()
                        rows += job.rows
                        jobs.append(job)
                self._in_flight = len(jobs)
            try:
                if jobs[0].fn is not None:
                    self._run_call(jobs[0])
                else:
                    self._commit_group(jobs)
            except BaseException as exc:  # never let the worker die silently
                _log.exception("otel-feedback writer failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(classify(exc) if isinstance(exc, Exception) else exc)
            finally:
                with self._cond:
                    self._queued_rows -= sum(j.rows for j in jobs)
                    self._in_flight = 0
                    self._cond.notify_all()

    def _run_call(self, job: _Job) -> None:
        assert job.fn is not None
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            result = job.fn(con)
            con.execute("COMMIT")
        except Exception as exc:
            con.execute("ROLLBACK")
            job.future.set_exception(exc)
            return
        job.future.set_result(result)

    def _commit_group(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            self._write(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                self.stats.failed_jobs += 1
                _log.warning("otel-feedback writer: a batch was refused: %s", exc)
                jobs[0].future.set_exception(classify(exc))
                return
            for job in jobs:  # find the bad one(s); the others still commit
                self._commit_group([job])
            return
        elapsed = time.perf_counter() - started
        stats = self.stats
        stats.commits += 1
        stats.jobs += len(jobs)
        stats.commit_seconds += elapsed
        for job in jobs:
            stats.rows += job.rows
            job.future.set_result(job.rows)

    def _write(self, jobs: list[_Job]) -> None:
        con = self._con
        next_seq = self._next_seq
        con.execute("BEGIN TRANSACTION")
        try:
            for name in TABLE_ORDER:
                parts = [j.tables[name] for j in jobs if j.tables and name in j.tables]
                if not parts:
                    continue
                table = _for_duckdb(name, parts[0] if len(parts) == 1 else pa.concat_tables(parts))
                if name == "feedback_log":
                    n = table.num_rows
                    table = table.append_column("seq", pa.array(range(next_seq, next_seq + n), pa.int64()))
                    next_seq += n
                con.register("__otel_feedback_batch", table)
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM __otel_feedback_batch")
                con.unregister("__otel_feedback_batch")
            con.execute("COMMIT")
        except Exception:
            # A failed statement aborts the transaction, and DuckDB then refuses even the unregister; keep
            # the first error (the one that says what was wrong), roll back, and clean up afterwards.
            for statement in (lambda: con.execute("ROLLBACK"), lambda: con.unregister("__otel_feedback_batch")):
                try:
                    statement()
                except duckdb.Error:
                    pass
            raise
        self._next_seq = next_seq
