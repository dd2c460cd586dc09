"""DuckDB's memory in a long-running server: a working target, a ceiling for what needs more, and a cache
handed back while no query runs.

DuckDB keeps every block of the file it writes or reads in memory until its ``memory_limit`` forces it out, so
a server's memory climbs to the limit and stays there: under sustained ingest with the blocks each checkpoint
writes (~7 MB a second at 60 k spans/s in the benchmark), which ingest never reads again; after queries with
the blocks they scanned. That memory is only a cache of what the operating system's page cache holds too.
But the limit cannot simply be low: some queries need far more than their data (each hash table takes 8-16 MB
whatever its input; the report's ``judge_agreement`` needs ~150 MB on a 144-span file).

:class:`MemoryGovernor` runs DuckDB at three levels:

- ``target``: DuckDB's ``memory_limit`` normally. The cache stays within it while queries run.
- ``limit``: the ceiling. A query that runs out of memory within the target is run once more with the limit
  raised to this (:meth:`MemoryGovernor.escalated`; the writer does the same if an append runs out), and the
  writer thread lowers it back to the target once the last such query has ended.
- ``keep``: the cache kept while no query runs. On the writer thread, at most once per ``interval_s`` after a
  write or a query, and once ``grace_s`` has passed since the last query ended (queries that follow each other
  closely keep what they share), it lowers DuckDB's limit to what DuckDB holds besides cached blocks plus
  ``keep`` (and a small margin) and sets it back at once: DuckDB drops its least recently used blocks of the
  file, which cost nothing to drop (they are on disk). Rows appended since the last checkpoint, query state and
  temporary data count as in use, so a trim never makes DuckDB spill them.
  The writer also trims right after each of its checkpoints (:meth:`MemoryGovernor.checkpointed`), whose
  blocks ingest never reads again.

DuckDB's threads follow the queries too (:meth:`MemoryGovernor.use_threads`): all of them from the moment a query
starts, one fewer once none has run for ``grace_s`` (the writer sets them back), so that ingest leaves a core to
the receivers (gRPC, decoding, the journal: about a core under full ingest), with which DuckDB's threads contended:
on 2 cores, ``bench/memory.py`` ingested 62.7-68.7 k spans/s at 0.0185-0.0190 s of CPU per 1,000 with one thread
against 51.9-53.7 k at 0.0219-0.0227 with two, while queries keep both cores (one thread for them too made
``worst_traces`` ~1.5x slower, 1.05 s under load in one full run).

Queries register while they run (:meth:`MemoryGovernor.reading`): a trim never runs under one (a query that
starts during a trim waits for it: 29 ms for 477 MB; in the benchmark's server a trim took about 2-17 ms on
average and at most 8-41 ms).

The writer must never run short: DuckDB treats running out of memory while a commit merges the rows appended
into the table as fatal (the database is invalidated until it is opened again; seen with a 128MB limit and
queries of the ``spans`` view holding ~120 MB beside an apply). So:

- while queries hold memory, an append starts only with room for it (:meth:`MemoryGovernor.room_to_write`):
  the writer first waits for the queries to end (up to :data:`WRITE_PATIENCE_S`, once per run of queries),
  then the limit is raised for it, or, where even the ceiling has no room, the writer waits for the queries;
- the limit is only ever lowered on the writer thread, between transactions (trims, the end of an escalation,
  and sparing reads: :meth:`MemoryGovernor.sparing`), and never while another writer of the instance is open
  (:attr:`MemoryGovernor.other_writers`): raising it is safe from any thread, lowering it under a commit is not.

Measured with ``bench/memory.py`` (3 raw senders flat out): VmRSS under ingest p50 ~270-280 MB, p99 ~300-330 MB,
where DuckDB's cache took it to ~450 MB and kept it there; the 128MB target against a 512MB one that is only
trimmed: ~45 MB less at the median and ~90 MB less at the peak, for the same CPU per span. With sparing reads, the
writer's waits and the 96MB target (session 13): p50 ~251, p99 ~278 MB; in full benchmark runs 280-288 MB after
ingest and 288-295 MB at the end, where the queries run beside ingest (338-341 before).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TypeVar

import duckdb

from ..config import parse_size

_log = logging.getLogger(__name__)

T = TypeVar("T")

CACHED_TAG = "BASE_TABLE"
"""``duckdb_memory()``'s tag of blocks of the file's tables: what a trim evicts."""

WRITE_ROOM_BYTES = 32 << 20
"""Least room an append starts with beside running queries (more for a larger append: three times its Arrow
size, for the rows in the transaction and their merge into the table at commit)."""

HUNGRY_QUERIES = 256
"""How many queries that ran out of memory within the target are remembered (and then run within the limit)."""

LOWER_RETRY_S = 0.25
"""How soon the writer tries again to lower a raised limit that running queries kept it from lowering."""

WRITE_PATIENCE_S = 1.0
"""How long an append or a checkpoint short of room beside running queries waits for them to end before it gets
the limit, once per run of queries (from the first to start until none runs): a query that starts next first
waits for what was acknowledged before it (the writer applies in between), so under queries one after another
the writer rarely needs the limit at all; the limit lets the queries' cache grow past the target too (the
server's highest memory in the benchmark came from appends beside its queries)."""

WRITE_WAIT_S = 30.0
"""Longest an append waits for queries to release memory before it is tried regardless."""

SPARING_ROOM_BYTES = 16 << 20
"""Room a sparing read (:meth:`MemoryGovernor.sparing`) gets above what DuckDB holds besides cached blocks and
``keep``: a scan needs a few blocks per thread, a semi join's hash table of a few keys less than 1 MB."""

MARGIN_BYTES = 4 << 20
"""Room a trim leaves above what DuckDB holds besides cached blocks and ``keep``: a few blocks of the file under
that tag are not evictable (seen: 0.8 MB in a new file), and without room for them DuckDB meets the lower limit by
spilling rows not yet checkpointed to ``<db>.tmp`` instead."""


class MemoryGovernor:
    """DuckDB's ``memory_limit`` over time. ``target`` and ``limit`` are sizes as DuckDB reads them
    (``128MB``); ``connect`` gives a cursor of the database instance (``SET memory_limit`` is instance-wide)."""

    def __init__(
        self,
        target: str,
        limit: str,
        keep_bytes: int,
        connect: Callable[[], duckdb.DuckDBPyConnection],
        *,
        can_escalate: bool = True,
        interval_s: float = 1.0,
        grace_s: float = 0.25,
    ) -> None:
        if keep_bytes < 0:
            raise ValueError(f"keep_bytes must be >= 0, got {keep_bytes}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.target = target
        self.limit = limit
        self._limit_bytes = parse_size(limit)
        self.keep_bytes = keep_bytes
        self.can_escalate = can_escalate
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._connect = connect
        self._lock = threading.Lock()
        self._no_readers = threading.Condition(self._lock)  # notified when the last running query ends
        self._readers = 0
        self._busy_runs = 0  # runs of queries so far (one starts when a query starts with none running)
        self._patient_run = -1  # the run in which an append or checkpoint last waited (WRITE_PATIENCE_S)
        self._escalated = 0
        self._dirty = False  # something may have been cached since the last trim
        self._raised = False  # DuckDB's limit is ``limit`` (an escalation raised it; only the writer lowers it)
        self._lower_at = 0.0  # when the writer may try to lower it again
        self._last_trim = 0.0
        self._trim_now = False  # a checkpoint wrote blocks: trim without waiting for the interval (checkpointed)
        self._last_read = 0.0  # when the last query ended
        self._spared = False  # DuckDB's limit is lowered for a sparing read (see sparing)
        self.other_writers = 0
        """Writers of the instance this governor does not hear from (a second read-write Store of the file in the
        process: its appends ask no room), while open: no sparing read or trim lowers the limit under them."""
        self._hungry: OrderedDict[str, None] = OrderedDict()  # queries that needed more than the target
        self._threads: tuple[int, int] | None = None  # (writer alone, while queries run), see use_threads
        self._threads_busy = False  # DuckDB has the query threads now
        self.wake: Callable[[], None] | None = None
        """Called when the last running query ends (a trim becomes due): the writer thread waits on it."""
        self.trims = 0
        self.spared_reads = 0
        """Reads run with the limit lowered (:meth:`sparing`)."""
        self.spared_reruns = 0
        """Of those, the ones that ran out of memory there and ran again within the target."""
        self.escalations = 0
        """Queries run within the limit: again after running out within the target, or at once when remembered."""
        self.reruns = 0
        """Queries that ran out of memory within the target (and ran again)."""
        self.write_escalations = 0
        """Appends given the limit: for room beside queries, or after running out within the target."""
        self.write_waits = 0
        """Appends and checkpoints that waited for running queries to end (:data:`WRITE_PATIENCE_S`)."""
        self.write_wait_seconds = 0.0
        self.evicted_bytes = 0
        self.trim_seconds = 0.0
        self.longest_trim_seconds = 0.0

    # -- queries ---------------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around a query: no trim runs until it ends; DuckDB has its query threads from its start (:meth:`use_threads`)."""
        with self._lock:
            if not self._readers:
                self._busy_runs += 1
            self._readers += 1
            if self._spared:  # a sparing read's lowered limit is not the queries': the target back first
                self._unspare()
            if self._threads is not None and not self._threads_busy:
                self._set_threads(self._threads[1])
                self._threads_busy = True
        try:
            yield
        finally:
            with self._lock:
                self._readers -= 1
                self._dirty = True
                self._last_read = time.monotonic()
                idle = self._readers == 0
                if idle:
                    self._no_readers.notify_all()
            if idle and self.wake is not None:
                self.wake()

    def use_threads(self, queries: int) -> None:
        """DuckDB's ``threads``: ``queries`` from the moment a query starts, one fewer (at least one) once none has
        run for ``grace_s`` (set back on the writer thread, by :meth:`maintain`: a ``SET threads`` takes ~0.35 ms,
        which queries that follow each other closely then pay once)."""
        if queries < 1:
            raise ValueError(f"queries must be >= 1, got {queries}")
        with self._lock:
            self._threads = (max(1, queries - 1), queries)
            self._threads_busy = bool(self._readers)
            self._set_threads(self._threads[1] if self._threads_busy else self._threads[0])

    def _threads_in(self) -> float | None:
        """Seconds until DuckDB's threads should go back to the writer's (0: now); None when nothing is to do."""
        if self._threads is None or not self._threads_busy or self._readers:
            return None
        return max(0.0, self._last_read + self.grace_s - time.monotonic())

    def _quiet_threads(self) -> None:
        with self._lock:
            if self._threads is not None and self._threads_busy and not self._readers:
                self._set_threads(self._threads[0])
                self._threads_busy = False

    def _set_threads(self, n: int) -> None:
        """Under ``_lock``: the first query to start sets the query threads, the writer the fewer ones."""
        con = self._connect()
        try:
            con.execute(f"SET threads = {int(n)}")
        except duckdb.Error as exc:  # never fail a query over it: DuckDB keeps the threads it has
            _log.debug("otel-feedback: could not set DuckDB's threads to %d: %s", n, exc)
        finally:
            con.close()

    @property
    def readers(self) -> int:
        return self._readers

    @contextmanager
    def escalated(self, write: bool = False) -> Iterator[None]:
        """DuckDB's limit raised to ``limit`` until the last escalated piece of work ends (``write``: an append's,
        on the writer thread, counted apart from queries'). Raising is safe from any thread; lowering is not (an
        append committing at that moment could find itself short, which DuckDB treats as fatal), so only the
        writer thread lowers the limit again: at once after its own escalation, else when :meth:`due_in` says."""
        with self._lock:
            self._escalated += 1
            if write:
                self.write_escalations += 1
            else:
                self.escalations += 1
            if not self._raised:
                self._set(self.limit)
                self._raised = True
        try:
            yield
        finally:
            with self._lock:
                self._escalated -= 1
                last = self._escalated == 0
            if last and write:
                self.lower()
            elif last and self.wake is not None:
                self.wake()

    def run(self, work: Callable[[], T], out_of_memory: type[BaseException], key: str | None = None) -> T:
        """``work()`` as a query; once more under :meth:`escalated` if it raised ``out_of_memory`` within the
        target. ``key`` (the SQL) remembers the queries that needed more: the next time they run within the limit
        at once instead of twice (the :data:`HUNGRY_QUERIES` most recent)."""
        with self.reading():
            if not self._hungry_again(key):
                try:
                    return work()
                except out_of_memory:
                    if not self.can_escalate:
                        raise
                    self.reruns += 1
                    _log.info(
                        "otel-feedback: a query ran out of memory within %s; again within %s", self.target, self.limit
                    )
                    self._remember_hungry(key)
            with self.escalated():
                return work()

    def _hungry_again(self, key: str | None) -> bool:
        with self._lock:
            if key is None or key not in self._hungry:
                return False
            self._hungry.move_to_end(key)
            return True

    def _remember_hungry(self, key: str | None) -> None:
        if key is None:
            return
        with self._lock:
            self._hungry[key] = None
            while len(self._hungry) > HUNGRY_QUERIES:
                self._hungry.popitem(last=False)

    @property
    def is_escalated(self) -> bool:
        return self._escalated > 0

    def lower(self) -> None:
        """On the writer thread, between transactions: the limit back to the target once nothing escalated runs
        (tried again a little later if DuckDB holds more than the target now)."""
        with self._lock:
            if not self._raised or self._escalated:
                return
            try:
                self._set(self.target)
            except duckdb.Error:  # running queries hold more than the target: try again soon
                self._lower_at = time.monotonic() + LOWER_RETRY_S
                return
            self._raised = False

    def _set(self, size: str) -> None:
        con = self._connect()
        try:
            con.execute(f"SET memory_limit = '{size}'")
        finally:
            con.close()

    # -- the writer thread -----------------------------------------------------------------------

    def room_to_write(self, con: duckdb.DuckDBPyConnection, nbytes: int) -> AbstractContextManager[None]:
        """Before an append of ``nbytes`` of Arrow on the writer thread: nothing to do while no query runs
        (only cached blocks, which DuckDB drops for the writer, and the writer's own rows are in memory); else,
        when the current limit leaves too little room beside what is held, a wait for the queries to end (up to
        :data:`WRITE_PATIENCE_S`, once per run of queries), then :meth:`escalated`, after waiting (up to
        :data:`WRITE_WAIT_S`) for the queries if even the ceiling has too little room."""
        if not self._readers:
            return nullcontext()
        need = max(WRITE_ROOM_BYTES, 3 * nbytes)
        deadline = time.monotonic() + WRITE_WAIT_S
        waited = False
        while True:
            held = self._held(con)
            if self._current_bytes() - held >= need or not self._readers:
                return nullcontext()
            if not waited:
                waited = True
                if self._wait_for_queries():
                    continue
            if self.can_escalate and self._limit_bytes - held >= need:
                return self.escalated(write=True)
            if time.monotonic() >= deadline:
                _log.warning(
                    "otel-feedback writer: queries hold %d MB of DuckDB's %s; appending regardless",
                    held >> 20,
                    self.limit,
                )
                return self.escalated(write=True) if self.can_escalate else nullcontext()
            time.sleep(0.05)

    def room_to_checkpoint(self, con: duckdb.DuckDBPyConnection) -> AbstractContextManager[None]:
        """Before the writer's CHECKPOINT: :meth:`escalated` when the current limit leaves less than
        :data:`WRITE_ROOM_BYTES` beside what DuckDB holds. A checkpoint that runs out of memory ("failed to pin
        block") invalidates the whole database until it is opened again (seen in the test suite, at a 2 MB limit
        set by hand). Short of room beside running queries, it waits for them first, as an append does."""
        if not self.can_escalate or self._current_bytes() - self._held(con) >= WRITE_ROOM_BYTES:
            return nullcontext()
        if self._wait_for_queries() and self._current_bytes() - self._held(con) >= WRITE_ROOM_BYTES:
            return nullcontext()
        return self.escalated(write=True)

    def _wait_for_queries(self) -> bool:
        """On the writer thread, short of room beside running queries: wait until none runs, up to
        :data:`WRITE_PATIENCE_S`, unless a wait in this run of queries already ran out (a long query, or queries
        that never stop: the next appends get the limit at once). Whether it waited."""
        with self._lock:
            if not self._readers or self._patient_run == self._busy_runs:
                return False
            self._patient_run = self._busy_runs
            started = time.monotonic()
            until = started + WRITE_PATIENCE_S
            while self._readers and (left := until - time.monotonic()) > 0:
                self._no_readers.wait(left)
            self.write_waits += 1
            self.write_wait_seconds += time.monotonic() - started
        return True

    def _current_bytes(self) -> int:
        """DuckDB's limit now: the whole limit while raised, else the target (as :meth:`lower` and trims set it)."""
        return self._limit_bytes if self._raised else parse_size(self.target)

    @staticmethod
    def _held(con: duckdb.DuckDBPyConnection) -> int:
        """Bytes DuckDB holds besides cached blocks of the file."""
        row = con.execute(
            "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag <> ?", [CACHED_TAG]
        ).fetchall()
        return int(row[0][0])

    def wrote(self) -> None:
        """The writer committed something (a checkpoint may have added blocks to the cache)."""
        self._dirty = True

    def checkpointed(self) -> None:
        """After the writer's checkpoint: the blocks it just wrote, which ingest never reads, are due to go at once
        (:meth:`maintain`, right after on the writer thread, once no query runs and ``grace_s`` has passed since the
        last), not at the next once-a-second trim. Under sustained ingest the writer checkpoints 3-4 times a second,
        ~24 MB each (``bench/memory.py``, two pairs of runs: VmRSS p99 292/288 -> 283/276 MB, VmHWM 298/308 ->
        288/279; 0.5 s of trims in 20 s instead of 0.1-0.2)."""
        with self._lock:
            self._dirty = True
            self._trim_now = True

    def due_in(self) -> float | None:
        """Seconds until the writer thread should call :meth:`maintain` (0: now); None while nothing is to do: no
        raised limit to lower, and nothing written or read since the last trim or a query running (the last
        query to end calls :attr:`wake`)."""
        waits = [w for w in (self._lower_in(), self._trim_in(), self._threads_in()) if w is not None]
        return min(waits) if waits else None

    def _lower_in(self) -> float | None:
        if not self._raised or self._escalated:
            return None
        return max(0.0, self._lower_at - time.monotonic())

    def _trim_in(self) -> float | None:
        if not self._dirty or self._readers:
            return None
        interval_ends = 0.0 if self._trim_now else self._last_trim + self.interval_s
        return max(0.0, max(interval_ends, self._last_read + self.grace_s) - time.monotonic())

    def maintain(self, con: duckdb.DuckDBPyConnection) -> None:
        """On the writer thread, between transactions: lower a raised limit, trim the cache, give DuckDB's threads
        back to the writer's count, whichever is due."""
        if self._lower_in() == 0.0:
            self.lower()
        if self._trim_in() == 0.0:
            self.trim(con)
        if self._threads_in() == 0.0:
            self._quiet_threads()

    def sparing(self, con: duckdb.DuckDBPyConnection, work: Callable[[], T]) -> T:
        """``work()``: a read on the writer thread, between transactions, that scans much of the file once and
        needs none of it again, run with DuckDB's limit lowered to what it holds besides cached blocks, plus
        ``keep`` and :data:`SPARING_ROOM_BYTES`: the scan evicts the blocks it has read as it goes, instead of
        filling the cache up to the target. It is for the search for earlier copies of spans that the filter
        could not rule out (:mod:`.maintained`), a few times a minute under ingest: it reads the ids of all of
        ``span_log``, which took DuckDB's allocations from ~20 to ~120 MB for the moment between it and the next
        trim (at 2.7 M spans; the server's highest memory under ingest, ~350 MB in the benchmark). Run as it is
        while queries run (their cache is theirs) or the limit is raised; a query that starts meanwhile sets the
        target back first (raising is safe from any thread). Nor while another writer of the instance is open
        (:attr:`other_writers`). A read that runs out of memory in the lowered limit runs again within the target."""
        with self._lock:
            if self._readers or self._raised or self._escalated or self.other_writers:
                lowered = False
            else:
                try:
                    room = self._held(con) + self.keep_bytes + SPARING_ROOM_BYTES
                    con.execute(f"SET memory_limit = '{room}B'")
                except duckdb.Error as exc:  # more is pinned than that: run within the target
                    _log.debug("otel-feedback: could not lower the limit for a sparing read: %s", exc)
                    con.execute(f"SET memory_limit = '{self.target}'")
                    lowered = False
                else:
                    self._spared = lowered = True
                    self.spared_reads += 1
        if not lowered:
            return work()
        try:
            return work()
        except duckdb.OutOfMemoryException:
            with self._lock:
                self._unspare()
                self.spared_reruns += 1
            return work()
        finally:
            with self._lock:
                self._unspare()

    def _unspare(self) -> None:
        """Under ``_lock``: the target back after a sparing read (once: by its end, or by a query that started)."""
        if self._spared:
            self._set(self.target)
            self._spared = False
            self._dirty = True  # what the read left cached goes at the next trim

    def trim(self, con: duckdb.DuckDBPyConnection) -> int:
        """Evict cached blocks beyond ``keep_bytes`` (and :data:`MARGIN_BYTES`) unless a query is running; the
        bytes evicted. Run it on the thread that owns ``con`` for writing, between transactions (the writer
        thread), so no append runs during the moment the limit is low."""
        with self._lock:  # a query that starts now waits until the limit is back
            if self._readers:
                return 0  # the last one to end marks the next trim due
            if self.other_writers:  # their commits ask no room: the cache stays within the target meanwhile
                self._dirty = False
                return 0
            self._dirty = False
            self._trim_now = False
            self._last_trim = started = time.monotonic()
            cached, other = con.execute(
                "SELECT coalesce(sum(memory_usage_bytes) FILTER (tag = ?), 0), "
                "coalesce(sum(memory_usage_bytes) FILTER (tag <> ?), 0) FROM duckdb_memory()",
                [CACHED_TAG, CACHED_TAG],
            ).fetchall()[0]
            evicted = 0
            if cached > self.keep_bytes + MARGIN_BYTES:
                try:
                    con.execute(f"SET memory_limit = '{int(other) + self.keep_bytes + MARGIN_BYTES}B'")
                except duckdb.Error as exc:  # more is pinned than that: DuckDB evicted what it could
                    _log.debug("otel-feedback: cache trim stopped short: %s", exc)
                finally:
                    # the target: no query runs (a query's escalation would count as one), nor an append
                    con.execute(f"SET memory_limit = '{self.target}'")
                    self._raised = False
                after = con.execute(
                    "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = ?", [CACHED_TAG]
                ).fetchall()[0][0]
                evicted = max(0, int(cached) - int(after))
            elapsed = time.monotonic() - started
        self.trims += 1
        self.evicted_bytes += evicted
        self.trim_seconds += elapsed
        self.longest_trim_seconds = max(self.longest_trim_seconds, elapsed)
        return evicted
