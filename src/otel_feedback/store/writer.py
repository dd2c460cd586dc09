"""The single write path: one thread owns the read-write DuckDB connection; everyone else enqueues.

Callers hand :meth:`Writer.submit` a mapping of table name -> Arrow table and get a
:class:`concurrent.futures.Future` that completes once those rows are durable:

- with a :class:`~.journal.Journal` (every file database, by default), once the journal thread has appended
  the job to the journal and ``fdatasync``ed it, together with every other job that arrived meanwhile. The
  DuckDB thread then applies journaled jobs in order, as many as fit in ``commit_rows`` per transaction, and
  records the last applied journal LSN in the same transaction. Queries wait for what was acknowledged before
  them (:meth:`Writer.wait_applied`), so an acknowledged write is always visible to the next query. DuckDB
  writes no WAL for such a database (the journal is the durable copy): the writer checkpoints it itself
  (``checkpoint_bytes``), and lets journal files go only once a checkpoint holds them.
- without one (``:memory:``, or ``OTEL_FEEDBACK_JOURNAL=false``), once the DuckDB transaction holding them has
  committed (a committed DuckDB transaction is in its WAL and survives ``kill -9``).

Either way the jobs are group-committed: the cost of a commit is shared by every job that arrived while the
previous one ran. Rows are checked against the tables' columns and NOT NULL constraints before they are
accepted, so bad rows are refused with a clear :class:`InvalidRequest` and never reach the journal.

The queue is bounded in rows: when it is full, ``submit`` raises :class:`QueueFull` at once (retryable), so
memory stays bounded and clients back off; and the journal thread stops acknowledging while DuckDB is more than
``lag_rows`` behind, so acknowledged-but-not-applied rows (memory, and how long a query may wait) stay bounded
too. If a group fails in DuckDB, each job in it is retried alone so one bad request cannot fail its neighbours.

With a :class:`~.memory.MemoryGovernor`, the writer thread also trims DuckDB's cache and lowers a raised memory
limit between transactions, and gives an append room before it starts beside running queries.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import duckdb
import pyarrow as pa

from ..errors import InvalidRequest, QueueFull, StoreUnavailable, WriteFailed
from . import maintained
from .journal import Journal, decode, encode
from .memory import MemoryGovernor

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
    try:
        table = table.combine_chunks()
    except pa.ArrowException:  # over 2 GiB in a string column (32-bit offsets): it stays in chunks
        pass
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
    longest_commit_seconds: float = 0.0
    journal_writes: int = 0
    journal_seconds: float = 0.0
    checkpoints: int = 0
    checkpoint_seconds: float = 0.0


class _Job:
    __slots__ = ("acked", "fn", "future", "lsn", "rows", "tables")

    def __init__(
        self,
        tables: Mapping[str, pa.Table] | None,
        rows: int,
        fn: Callable[[duckdb.DuckDBPyConnection], Any] | None = None,
    ) -> None:
        self.tables = tables
        self.rows = rows
        self.fn = fn
        self.lsn = 0
        self.acked = 0.0  # when the journal acknowledged it (monotonic)
        self.future: Future[Any] = Future()


@dataclass(frozen=True)
class TableRules:
    """What a writable table accepts: its columns, those that refuse NULL, and those that must be given
    (NOT NULL with no default; ``feedback_log.seq`` is the writer's)."""

    columns: frozenset[str]
    not_null: frozenset[str]
    required: frozenset[str]


def table_rules(con: duckdb.DuckDBPyConnection) -> dict[str, TableRules]:
    rows = con.execute(
        "SELECT table_name, column_name, is_nullable, column_default IS NOT NULL FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main'"
    ).fetchall()
    cols: dict[str, list[tuple[str, bool, bool]]] = {}
    for table, column, nullable, has_default in rows:
        if table in TABLE_ORDER:
            cols.setdefault(table, []).append((column, nullable, has_default))
    return {
        t: TableRules(
            frozenset(c for c, _, _ in spec),
            frozenset(c for c, nullable, _ in spec if not nullable),
            frozenset(c for c, nullable, d in spec if not nullable and not d and (t, c) != ("feedback_log", "seq")),
        )
        for t, spec in cols.items()
    }


def check_rows(name: str, table: pa.Table, rules: Mapping[str, TableRules]) -> None:
    """:class:`InvalidRequest` naming the column if ``table`` cannot go into ``name`` as it is (checked before a
    job is accepted, so that what is acknowledged is what DuckDB takes)."""
    rule = rules.get(name)
    if rule is None:
        return
    prefix = "the database refused the rows:"
    for column in table.column_names:
        if column not in rule.columns:
            raise InvalidRequest(f"{prefix} table {name} has no column {column!r}")
        nulls = table.column(column).null_count
        if nulls and column in rule.not_null:
            raise InvalidRequest(f"{prefix} NOT NULL constraint failed: {name}.{column} ({nulls} NULL values)")
    missing = sorted(rule.required - set(table.column_names))
    if missing:
        raise InvalidRequest(f"{prefix} NOT NULL constraint failed: {name}.{missing[0]} (column missing)")


class Writer:
    """Owns ``con`` from :meth:`start` until :meth:`close`; no other thread may use it.

    ``checkpoint_bytes`` is for a database DuckDB writes no WAL for (attached with ``RECOVERY_MODE
    no_wal_writes``, where the journal already makes every acknowledged write durable): a commit is then only in
    memory until a checkpoint writes it into the file, so the writer checkpoints itself once that many bytes of
    rows were appended since the last one, ``checkpoint_idle_s`` after the last write, and at the latest
    ``checkpoint_max_age_s`` after the first write since the last one (a trickle of feedback must not keep the
    rows of a burst of ingest in memory, and in the journal, indefinitely); journal files are
    deleted only once a checkpoint holds every record in them. ``0`` (a writer without a journal on such a
    database) checkpoints every commit before acknowledging it."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        queue_rows: int,
        commit_rows: int,
        journal: Journal | None = None,
        lag_rows: int = 10_000,  # 20,000 held ~27 MB more at peak for ~5-10 % more ingest
        apply_rows: int = 5_000,
        apply_linger_s: float = 1.0,
        memory: MemoryGovernor | None = None,
        checkpoint_bytes: int | None = None,
        checkpoint_idle_s: float = 5.0,
        checkpoint_max_age_s: float = 15.0,
        known: maintained.Known | None = None,
    ) -> None:
        if queue_rows < 1:
            raise ValueError(f"queue_rows must be >= 1, got {queue_rows}")
        if not 1 <= commit_rows <= queue_rows:
            raise ValueError(f"commit_rows must be between 1 and queue_rows ({queue_rows}), got {commit_rows}")
        self._con = con
        self._queue_rows = queue_rows
        self._commit_rows = commit_rows
        self._journal = journal
        self._lag_limit = max(1, lag_rows)
        self._apply_rows = max(1, min(apply_rows, self._lag_limit))
        self._apply_linger = apply_linger_s
        self._waiters = 0  # threads in wait_applied or flush: DuckDB applies at once for them
        self._memory = memory
        # the search for earlier copies of spans keeps what it reads out of DuckDB's cache (store/maintained.py)
        self._spare = None if memory is None else partial(memory.sparing, con)
        # Checkpoints the writer runs itself, where DuckDB writes no WAL (see checkpoint_bytes in the class doc).
        self._checkpoint_bytes = checkpoint_bytes
        self._checkpoint_idle = checkpoint_idle_s
        self._checkpoint_max_age = checkpoint_max_age_s
        self._unsaved_bytes = 0  # appended since the last checkpoint (no-WAL only)
        self._first_write = 0.0  # the first of them
        self._last_write = 0.0
        self._checkpoint_error: Exception | None = None  # of the last checkpoint, if it failed
        self._rules = table_rules(con)
        self._known = known if known is not None else maintained.Known.load(con)
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()  # accepted, not yet journaled (journal mode)
        self._queue: deque[_Job] = deque()  # for DuckDB, in order
        self._queued_rows = 0  # accepted and not yet in DuckDB
        self._lag_rows = 0  # journaled (acknowledged) and not yet in DuckDB
        self._in_flight = 0
        self._journal_busy = False
        self._journal_done = journal is None
        self._closed = False
        # fetchall, not fetchone: the writer thread's first insert registers a table right after this (see insert)
        self._next_seq = int(con.execute("SELECT coalesce(max(seq), 0) FROM feedback_log").fetchall()[0][0]) + 1
        self._applied_lsn = self._acked_lsn = journal.last_lsn if journal is not None else 0
        self._saved_lsn = self._applied_lsn  # in the database file itself (checkpointed, or in DuckDB's WAL)
        self.stats = WriterStats()
        if memory is not None:
            memory.wake = self._wake
        self._thread = threading.Thread(target=self._run, name="otel-feedback-writer", daemon=True)
        self._thread.start()
        self._journal_thread: threading.Thread | None = None
        if journal is not None:
            self._journal_thread = threading.Thread(target=self._journal_run, name="otel-feedback-journal", daemon=True)
            self._journal_thread.start()

    # -- callers -------------------------------------------------------------------------------

    def submit(self, tables: Mapping[str, pa.Table]) -> Future[int]:
        """Queue rows for the next commit; the future's result is the number of rows made durable.

        Rows a table cannot take give a future failed with :class:`InvalidRequest` (nothing of the job is
        written). Raises :class:`QueueFull` (retryable) when the queue cannot take them now, and
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
        assert job.tables is not None
        try:
            for name, table in job.tables.items():
                check_rows(name, table, self._rules)
        except InvalidRequest as exc:
            self.stats.failed_jobs += 1
            job.future.set_exception(exc)
            return job.future
        self._enqueue(job)
        return job.future

    def call(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Future[Any]:
        """Run ``fn(connection)`` on the writer thread inside its own transaction, after every job submitted
        before it has been applied."""
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
            (self._pending if self._journal is not None else self._queue).append(job)
            self._queued_rows += job.rows
            self._cond.notify_all()

    @property
    def queued_rows(self) -> int:
        """Rows accepted but not yet in DuckDB."""
        return self._queued_rows

    def wait_applied(self, timeout_s: float = 10.0) -> bool:
        """Wait until DuckDB holds every job acknowledged before this call (at once without a journal), so a
        query sees them; False if that took longer than ``timeout_s``. Never call it on the writer thread."""
        if self._journal is None:
            return True
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._acked_lsn
            if self._applied_lsn >= target:
                return True
            self._waiters += 1
            self._cond.notify_all()
            try:
                while self._applied_lsn < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._thread.is_alive():
                        return False
                    self._cond.wait(remaining)
            finally:
                self._waiters -= 1
        return True

    def flush(self, timeout_millis: float | None = None) -> bool:
        """Wait until everything submitted before this call is in DuckDB (or failed); False on timeout."""
        deadline = None if timeout_millis is None else time.monotonic() + timeout_millis / 1000
        with self._cond:
            self._waiters += 1
            self._cond.notify_all()
            try:
                while self._pending or self._journal_busy or self._queue or self._in_flight:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._waiters -= 1
        return True

    def close(self, timeout_millis: float | None = 30_000) -> bool:
        """Refuse new work, apply what is queued, stop the threads. Idempotent. False if they did not finish in
        time (then the connection must not be closed)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = None if timeout_millis is None else time.monotonic() + timeout_millis / 1000
        for thread in (self._journal_thread, self._thread):
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not self._thread.is_alive() and not (self._journal_thread and self._journal_thread.is_alive())
        if done and self._checkpoint_bytes is not None and self._unsaved_bytes:
            self._checkpoint()  # on the closing thread: the writer thread has ended
        if done and self._journal is not None:
            self._journal.close(self._saved_lsn)
        return done

    # -- the journal thread --------------------------------------------------------------------

    def _journal_run(self) -> None:
        journal = self._journal
        assert journal is not None
        while True:
            with self._cond:
                # While DuckDB is far behind, acknowledge nothing more: clients wait (backpressure) instead of
                # memory and query waits growing without bound. Closing drains regardless.
                while not self._pending or (self._lag_rows >= self._lag_limit and not self._closed):
                    if self._closed and not self._pending:
                        self._journal_done = True
                        self._cond.notify_all()
                        return
                    self._cond.wait(0.5 if self._closed else None)
                # take what fits under the lag limit (at least one job, so a large one still goes through)
                batch = [self._pending.popleft()]
                room = self._lag_limit - self._lag_rows - batch[0].rows
                while self._pending and (self._closed or self._pending[0].rows <= room):
                    room -= self._pending[0].rows
                    batch.append(self._pending.popleft())
                self._journal_busy = True
            try:
                self._journal_batch(journal, batch)
            except BaseException:  # never let the thread die silently
                _log.exception("otel-feedback journal thread failed")
            finally:
                with self._cond:
                    self._journal_busy = False
                    self._cond.notify_all()

    def _journal_batch(self, journal: Journal, batch: list[_Job]) -> None:
        lsn0, seq0 = journal.last_lsn, self._next_seq
        lsn, seq = lsn0, seq0
        started = time.perf_counter()
        try:
            records = []
            for job in batch:
                if job.fn is not None:
                    continue
                assert job.tables is not None
                lsn += 1
                job.lsn = lsn
                fb = job.tables.get("feedback_log")
                if fb is not None:
                    job.tables = {**job.tables, "feedback_log": _with_seq(fb, seq)}
                    seq += fb.num_rows
                records.append((lsn, encode(job.tables)))
            journal.append(records)
        except Exception as exc:  # nothing of the batch is acknowledged; its LSNs and seqs are given again
            _log.error("otel-feedback journal: append failed: %s", exc)
            failed = [j for j in batch if j.fn is None]
            with self._cond:
                self._queued_rows -= sum(j.rows for j in failed)
                for job in batch:
                    if job.fn is not None:
                        self._queue.append(job)
                self._cond.notify_all()
            for job in failed:
                job.future.set_exception(WriteFailed(f"writing to the journal failed: {exc}"))
            return
        self._next_seq = seq
        self.stats.journal_writes += 1
        self.stats.journal_seconds += time.perf_counter() - started
        with self._cond:
            now = time.monotonic()
            for job in batch:
                job.acked = now
                self._queue.append(job)
                self._lag_rows += job.rows
            if lsn > lsn0:
                self._acked_lsn = lsn
            self._cond.notify_all()
        for job in batch:
            if job.fn is None:
                job.future.set_result(job.rows)

    # -- the DuckDB thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ready():
                    if not self._queue and self._closed and self._journal_done:
                        return
                    if self._maintenance_due() or self._checkpoint_in() == 0.0:
                        break
                    self._cond.wait(self._wait_s())
                if not self._ready():  # only a cache trim or a checkpoint is due
                    jobs = []
                else:
                    jobs = [self._queue.popleft()]
                    if jobs[0].fn is None:
                        rows = jobs[0].rows
                        while (
                            self._queue
                            and self._queue[0].fn is None
                            and rows + self._queue[0].rows <= self._commit_rows
                        ):
                            job = self._queue.popleft()
                            rows += job.rows
                            jobs.append(job)
                    self._in_flight = len(jobs)
            if jobs:
                self._run_jobs(jobs)
            if self._checkpoint_in() == 0.0:
                self._checkpoint()
            if self._maintenance_due():
                self._maintain()

    def _run_jobs(self, jobs: list[_Job]) -> None:
        try:
            if jobs[0].fn is not None:
                self._run_call(jobs[0])
            elif self._journal is not None:
                self._apply_journaled(jobs)
            else:
                self._commit_group(jobs)
        except BaseException as exc:  # never let the worker die silently
            _log.exception("otel-feedback writer failed")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(classify(exc) if isinstance(exc, Exception) else exc)
        finally:
            if self._memory is not None:
                self._memory.wrote()
            with self._cond:
                n = sum(j.rows for j in jobs)
                self._queued_rows -= n
                if self._journal is not None and jobs[0].fn is None:
                    self._lag_rows -= n
                self._in_flight = 0
                self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _maintenance_due(self) -> bool:
        return self._memory is not None and self._memory.due_in() == 0.0

    def _maintain(self) -> None:
        assert self._memory is not None
        try:
            self._memory.maintain(self._con)
        except Exception:  # never let the worker die over a cache trim
            _log.exception("otel-feedback writer: cache trim failed")

    def _wait_s(self) -> float | None:
        """How long the writer thread may sleep: until the oldest small job's linger ends, the governor's
        maintenance or a checkpoint is due."""
        maintenance = self._memory.due_in() if self._memory is not None else None
        waits = [w for w in (self._linger_left(), maintenance, self._checkpoint_in()) if w is not None]
        return min(waits) if waits else None

    def _checkpoint_in(self) -> float | None:
        """Seconds until the writer's own checkpoint is due (0: now); None with nothing unsaved (or DuckDB's WAL).
        A writer that checkpoints every commit (``checkpoint_bytes`` 0) does so in :meth:`_write`."""
        if not self._checkpoint_bytes or not self._unsaved_bytes:
            return None
        if self._unsaved_bytes >= self._checkpoint_bytes:
            return 0.0
        due = min(self._last_write + self._checkpoint_idle, self._first_write + self._checkpoint_max_age)
        return max(0.0, due - time.monotonic())

    def _checkpoint(self) -> bool:
        """Write what DuckDB holds only in memory into the file; then the journal files it covers can go."""
        lsn = self._applied_lsn
        started = time.perf_counter()
        try:
            with nullcontext() if self._memory is None else self._memory.room_to_checkpoint(self._con):
                self._con.execute("CHECKPOINT")
        except Exception as exc:  # the journal still has everything: retried after the next write, or at close
            self._checkpoint_error = exc
            _log.error("otel-feedback writer: checkpoint failed (the journal keeps the writes): %s", exc)
            self._last_write = self._first_write = time.monotonic()  # tried again in checkpoint_idle_s
            return False
        self._checkpoint_error = None
        self._unsaved_bytes = 0
        self.stats.checkpoints += 1
        self.stats.checkpoint_seconds += time.perf_counter() - started
        if self._memory is not None:
            self._memory.checkpointed()
        self._saved(lsn)
        return True

    def _saved(self, lsn: int) -> None:
        self._saved_lsn = max(self._saved_lsn, lsn)
        if self._journal is not None:
            self._journal.release(self._saved_lsn)

    def _ready(self) -> bool:
        """Whether to apply now (called holding the lock). Journaled jobs are already durable, so with a journal
        small ones wait a little (``apply_linger_s``) to share one DuckDB commit: a commit costs ~8 ms of CPU and
        disk however few rows it holds, and it slows acknowledgements running beside it. Nothing waits when
        enough rows are queued, a query or flush is waiting for them, a ``call`` is next, or the writer closes."""
        if not self._queue:
            return False
        if self._journal is None or self._closed or self._waiters or self._queue[0].fn is not None:
            return True
        return self._lag_rows >= self._apply_rows or self._linger_left() <= 0

    def _linger_left(self) -> float | None:
        if not self._queue or self._journal is None:
            return None
        return max(0.0, self._queue[0].acked + self._apply_linger - time.monotonic())

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
        self._wrote_unsaved()  # it may have written: the next checkpoint keeps that
        if self._checkpoint_bytes == 0:
            self._checkpoint()
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
        self._count(jobs, time.perf_counter() - started)
        for job in jobs:
            job.future.set_result(job.rows)

    def _count(self, jobs: list[_Job], elapsed: float) -> None:
        stats = self.stats
        stats.commits += 1
        stats.jobs += len(jobs)
        stats.commit_seconds += elapsed
        stats.longest_commit_seconds = max(stats.longest_commit_seconds, elapsed)
        stats.rows += sum(j.rows for j in jobs)

    def _apply_journaled(self, jobs: list[_Job]) -> None:
        """Apply acknowledged jobs; they are in the journal, so a failure must never drop one silently: a
        retryable failure is retried until it succeeds (or the writer closes, leaving them to the next open's
        replay), and rows DuckDB refuses for good are set aside next to the journal and reported."""
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                self._write(jobs)
            except Exception as exc:
                error = classify(exc)
                if len(jobs) > 1:
                    for job in jobs:
                        self._apply_journaled([job])
                    return
                if isinstance(error, InvalidRequest):
                    self._set_aside(jobs[0], error)
                    return
                if self._closed:
                    _log.error("otel-feedback writer: %s; left in the journal for the next open", error)
                    return
                _log.warning("otel-feedback writer: %s; retrying in %.2f s", error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._count(jobs, time.perf_counter() - started)
            self._applied(jobs[-1].lsn)
            return

    def _applied(self, lsn: int) -> None:
        with self._cond:
            self._applied_lsn = max(self._applied_lsn, lsn)
            self._cond.notify_all()
        if self._checkpoint_bytes is None:  # DuckDB's WAL has the commit: the file has it
            self._saved(self._applied_lsn)

    def _set_aside(self, job: _Job, error: Exception) -> None:
        assert self._journal is not None and job.tables is not None
        self.stats.failed_jobs += 1
        set_aside(self._con, self._journal, job.lsn, job.tables, error)
        self._wrote_unsaved()
        self._applied(job.lsn)

    def _wrote_unsaved(self, nbytes: int = 1) -> None:
        if self._checkpoint_bytes is not None:
            if not self._unsaved_bytes:
                self._first_write = time.monotonic()
            self._unsaved_bytes += nbytes
            self._last_write = time.monotonic()

    def _write(self, jobs: list[_Job]) -> None:
        # the jobs' Arrow size (buffers shared between tables counted twice: an upper bound, cheaply), wanted by
        # the governor's room check and the writer's own checkpoints
        nbytes = sum(t.get_total_buffer_size() for j in jobs if j.tables for t in j.tables.values())
        self._write_rows(jobs, nbytes)
        if self._checkpoint_bytes is not None:
            self._wrote_unsaved(max(1, nbytes))
            if self._checkpoint_bytes == 0 and not self._checkpoint():  # no journal: durable only once in the file
                raise WriteFailed(f"the commit could not be made durable: {self._checkpoint_error}")

    def _write_rows(self, jobs: list[_Job], nbytes: int) -> None:
        memory = self._memory
        if memory is None:
            self._insert(jobs)
            return
        with memory.room_to_write(self._con, nbytes):
            try:
                self._insert(jobs)
            except duckdb.OutOfMemoryException:
                if not memory.can_escalate or memory.is_escalated:
                    raise
                _log.info("otel-feedback writer: out of memory within %s; again within %s", memory.target, memory.limit)
                with memory.escalated(write=True):
                    self._insert(jobs)

    def _insert(self, jobs: list[_Job]) -> None:
        tables = [j.tables for j in jobs if j.tables]
        if self._journal is not None:  # seq was given at journal time (by the journal thread, which owns _next_seq)
            insert(self._con, tables, lsn=jobs[-1].lsn, known=self._known, spare=self._spare)
        else:
            self._next_seq = insert(self._con, tables, self._next_seq, known=self._known, spare=self._spare)


def _with_seq(table: pa.Table, first: int) -> pa.Table:
    return table.append_column("seq", pa.array(range(first, first + table.num_rows), pa.int64()))


_KEEP_REGISTERED_BYTES = 1 << 20
"""Arrow tables up to this size stay registered after their insert (the next one under the same name replaces
them): unregistering costs ~1.8 ms, a quarter of a one-row apply. Larger ones are let go at once."""


def insert(
    con: duckdb.DuckDBPyConnection,
    jobs: list[Mapping[str, pa.Table]],
    next_seq: int = 0,
    lsn: int | None = None,
    *,
    known: maintained.Known,
    spare: maintained.Sparing | None = None,
) -> int:
    """Append the jobs' tables in one transaction, with the tables kept beside them (:mod:`.maintained`, as
    ``known`` says they need) and ``lsn`` recorded as applied; the next feedback ``seq``.
    Feedback rows without ``seq`` (no journal) are numbered here from ``next_seq``; journaled ones have theirs.

    The tables are registered before the transaction and the whole transaction goes to DuckDB as one
    multi-statement call (BEGIN, the inserts, the LSN, COMMIT): each call into DuckDB has a fixed cost, a table
    registered inside a transaction costs ~1.4 ms more, and unregistering one ~1.8 ms (see
    ``_KEEP_REGISTERED_BYTES``). A one-row feedback apply took 6.4-6.9 ms as separate calls, 5.6-6.0 ms this way
    (2 M spans in the file). DuckDB refuses register() while the connection's last result is unfinished (a
    ``fetchone()`` that left rows; a later ``execute`` ends it): the statements that run right before inserts on
    this connection, the replay's and the Writer's opening query, read with ``fetchall()``. ``spare`` runs the search for
    earlier copies of spans (before the transaction) keeping what it reads out of DuckDB's cache."""
    with known.writing:
        return _insert(con, jobs, next_seq, lsn, known, spare)


def _insert(
    con: duckdb.DuckDBPyConnection,
    jobs: list[Mapping[str, pa.Table]],
    next_seq: int,
    lsn: int | None,
    known: maintained.Known,
    spare: maintained.Sparing | None,
) -> int:
    statements = ["BEGIN TRANSACTION"]
    registered: list[tuple[str, int]] = []
    inserted: dict[str, tuple[str, pa.Table]] = {}

    def stage(name: str, table: pa.Table) -> None:
        """``table`` registered as the rows this transaction appends to ``name`` (again: in place of the last)."""
        view = f"__otel_feedback_{name}"
        con.register(view, table)
        if name not in inserted:
            registered.append((view, table.get_total_buffer_size()))
            statements.append(f"INSERT INTO {name} BY NAME SELECT * FROM {view}")
        inserted[name] = (view, table)

    try:
        for name in TABLE_ORDER:
            parts = [j[name] for j in jobs if name in j]
            if not parts:
                continue
            table = _for_duckdb(name, parts[0] if len(parts) == 1 else pa.concat_tables(parts))
            if name == "feedback_log" and "seq" not in table.column_names:
                table = _with_seq(table, next_seq)
                next_seq += table.num_rows
            stage(name, table)
        # the tables kept beside the logs (store/maintained.py), in the same transaction: the copies (and the
        # span rows again if copies of one span had to move apart), then the statements
        for name, table in maintained.copies(con, inserted, known, spare).items():
            stage(name, table)
        statements.extend(maintained.statements(inserted.get("span_log"), inserted.get("feedback_log"), known))
        if lsn is not None:
            statements.extend(applied_statements(lsn))
        statements.append("COMMIT")
        con.execute(";\n".join(statements))
    except Exception:
        # A failed statement aborts the transaction: roll it back (nothing to do if BEGIN never ran), keeping
        # the first error (the one that says what was wrong).
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    finally:
        for view, nbytes in registered:
            if nbytes > _KEEP_REGISTERED_BYTES:
                try:
                    con.unregister(view)
                except duckdb.Error:
                    pass
    return next_seq


def applied_statements(lsn: int) -> list[str]:
    """The statements that record journal record ``lsn`` as applied in ``_journal`` (one row: the last LSN applied;
    an LSN lower than the one recorded changes nothing). Its row is replaced by a DELETE and an INSERT, not
    UPDATEd: DuckDB refuses a CHECKPOINT while a transaction older than an UPDATE's commit is still running ("there
    are other write transactions active"), so every apply's UPDATE made the writer's checkpoints fail for as long
    as any query ran (99-214 failed checkpoints in a benchmark run, all while its queries ran beside ingest: rows
    not checkpointed piled up in memory and the log filled with errors). Inserts and deletes do not hold it back."""
    n = int(lsn)
    return [
        f"DELETE FROM _journal WHERE applied_lsn < {n}",
        f"INSERT INTO _journal SELECT {n} WHERE NOT EXISTS (FROM _journal)",
    ]


def set_aside(
    con: duckdb.DuckDBPyConnection, journal: Journal, lsn: int, tables: Mapping[str, pa.Table], error: Exception
) -> None:
    """Rows DuckDB refused for good, although their journal record was acknowledged: kept (fsynced) in
    ``rejected-<lsn>.arrows`` beside the journal, an Arrow IPC stream per table as in the journal, with the
    reason in ``.txt``; logged; and the record marked applied, so it is not tried again."""
    path = journal.directory / f"rejected-{lsn:016d}.arrows"
    rows = b"".join(encode(tables))
    for target, data in ((path, rows), (path.with_suffix(".txt"), f"{error}\n".encode())):
        with open(target, "wb") as f:  # durable before the record is marked applied (and its file deleted)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _log.error("otel-feedback: journal record %d was refused (%s); its rows are kept in %s", lsn, error, path)
    con.execute("BEGIN TRANSACTION;\n" + ";\n".join(applied_statements(lsn)) + ";\nCOMMIT")


def replay(
    con: duckdb.DuckDBPyConnection,
    journal: Journal,
    batch_rows: int = 100_000,
    checkpoint: bool = False,
    known: maintained.Known | None = None,
) -> tuple[int, int]:
    """Apply the journal records DuckDB does not have yet (after a crash); (records, rows) applied. With
    ``checkpoint`` (a database DuckDB writes no WAL for), they are checkpointed into the file before the journal
    files are let go."""
    found = con.execute("SELECT applied_lsn FROM _journal").fetchall()
    applied = int(found[0][0]) if found else 0
    known = known if known is not None else maintained.Known.load(con)
    records = rows = pending = 0
    last = applied
    batch: list[tuple[int, dict[str, pa.Table]]] = []

    def flush() -> None:
        if not batch:
            return
        try:
            insert(con, [t for _, t in batch], lsn=batch[-1][0], known=known)
        except Exception:
            for lsn, tables in batch:  # find the refused record(s); keep the rest
                try:
                    insert(con, [tables], lsn=lsn, known=known)
                except Exception as exc:
                    error = classify(exc)
                    if not isinstance(error, InvalidRequest):
                        raise
                    set_aside(con, journal, lsn, tables, error)
        batch.clear()

    for lsn, payload in journal.records():
        last = max(last, lsn)
        if lsn <= applied:
            continue
        tables = decode(payload)
        batch.append((lsn, tables))
        n = sum(t.num_rows for t in tables.values())
        records += 1
        rows += n
        pending += n
        if pending >= batch_rows:
            flush()
            pending = 0
    flush()
    if checkpoint and records:
        con.execute("CHECKPOINT")
    journal.start(last + 1)
    return records, rows
