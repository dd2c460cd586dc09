"""The store: one DuckDB file, its schema and views, the one writer, and read-only queries.

``Store(path)`` opens the file read-write (creating it, migrating it, installing the views and
starting the writer); ``Store(path, read_only=True)`` opens it for queries only. Only this package
opens DuckDB.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from ..config import MIN_MEMORY_BYTES, Settings, parse_size
from ..errors import ConfigError, DatabaseLocked, QueryOutOfMemory, SchemaError, StoreUnavailable
from . import query as _query
from .journal import Journal, journal_dir
from .maintained import Known
from .memory import MemoryGovernor
from .schema import SCHEMA_VERSION, check_version, file_version, migrate
from .views import VIEWS
from .writer import TABLE_ORDER, Writer, WriterStats, replay

__all__ = ["SCHEMA_VERSION", "TABLE_ORDER", "Store", "WriterStats", "shared_store"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

_LOCK_RE = re.compile(r"Could not set lock on file(?:.*?\(PID (\d+)\))?", re.S)


def _quiet(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """No progress bar: a long migration or query must not draw on a server's or a CLI's stdout.
    (A second connection to an instance whose configuration a server has locked cannot change it.)"""
    try:
        con.execute("SET enable_progress_bar = false")
    except duckdb.Error:
        pass
    return con


ROW_GROUP_ROWS = 16_384
"""Rows per DuckDB row group in a file this package writes (DuckDB's default is 122,880). Rows appended since the
last checkpoint are held in memory, and a checkpoint rewrites the last, partly filled row group whole: with
122,880-row groups and checkpoints every ~30 k spans, each span was compressed again four times, and the server
held ~500 MB more. With groups smaller than a checkpoint's worth of rows, each is written once (in-process,
LLM-app spans, 32 MB checkpoints: 48 k -> 150 k rows/s, 21 -> 7 us of CPU a row, 770 -> 390 MB peak; the file
~20 % larger: 216 -> 255-264 bytes a span in the benchmark). ``otel-feedback compact`` rewrites the file with
DuckDB's default groups."""

NO_VACUUM = 0
"""DuckDB's ``max_vacuum_tasks`` for a file held read-write: no row-group merges at checkpoints. A checkpoint
merges adjacent row groups that together hold fewer rows than they could (under ingest such groups appear however
the checkpoints fall: ``tests/test_row_groups.py``), re-reading and compressing up to three of them again: in the server, one checkpoint in 2-5 took 250-600 ms instead of 60-90 and allocated 40-130 MB more while
it ran (the highest peaks of RSS under ingest). otel-feedback only appends, so there are no deleted rows for a
merge to reclaim: the partly filled groups stay as written (the file is no larger: 272 bytes a span in the
benchmark either way) until ``otel-feedback compact`` rewrites it."""

DEFAULT_CHECKPOINT = Settings.checkpoint_threshold
"""How much the writer appends between its checkpoints where none is given (as ``serve``: about one row group)."""

_RESERVED_CATALOGS = frozenset({"memory", "system", "temp", "main", ""})


class _Instance:
    """One DuckDB database instance holding a file read-write in this process. DuckDB refuses to attach a file
    twice in one process, so every read-write Store of the file, and read-only ones while it is open, use
    connections of this instance; the root connection is closed when the last of them closes."""

    def __init__(self, root: duckdb.DuckDBPyConnection, catalog: str, wal: bool) -> None:
        self.root = root
        self.catalog = catalog
        self.wal = wal
        """Whether DuckDB writes its WAL for the file (else a commit is in the file only after a checkpoint)."""
        self.memory: MemoryGovernor | None = None
        """The governor of the instance's memory, if a Store (``serve``'s) set one up; its writer maintains it."""
        self.known: Known | None = None
        """What its feedback holds for the writers' upkeep of the maintained tables (shared: every writer of the
        file in this process must see what the others wrote)."""
        self.users = 0

    def use(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """``con`` (a cursor of this instance) reading the file: a new cursor starts in DuckDB's in-memory default
        database (one ``USE``, ~80 us)."""
        con.execute(f"USE {_ident(self.catalog)}")
        return con

    def connect(self) -> duckdb.DuckDBPyConnection:
        self.users += 1
        return _quiet(self.use(self.root.cursor()))


_INSTANCES: dict[str, _Instance] = {}
_INSTANCES_LOCK = threading.Lock()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _open_error(path: str, exc: duckdb.Error) -> Exception:
    """Why ``path`` could not be opened: :class:`DatabaseLocked` when another process holds it."""
    text = str(exc)
    m = _LOCK_RE.search(text)
    if m:
        pid = f" (PID {m.group(1)})" if m.group(1) else ""
        return DatabaseLocked(
            f"{path} is in use by another process{pid}, probably `otel-feedback serve`; DuckDB lets "
            "no other process open it meanwhile. Query the running server instead: "
            'otel-feedback query --url http://127.0.0.1:4318 "SQL" (or stop the server).'
        )
    return SchemaError(f"cannot open {path}: {text}")


def _attach(path: str, wal: bool) -> _Instance:
    """A new instance with ``path`` attached read-write (row groups of ``ROW_GROUP_ROWS``) as its default
    database, named after the file as ``duckdb.connect(path)`` would name it. Without ``wal`` (the journal makes
    writes durable), DuckDB writes no WAL (``RECOVERY_MODE no_wal_writes``; a WAL an earlier process left is still
    applied): the writer checkpoints instead."""
    stem = Path(path).name.split(".")[0]
    catalog = stem if stem.lower() not in _RESERVED_CATALOGS else "otel_feedback"
    # spills go next to the file, as they do for duckdb.connect(path) (an in-memory root's default is ./.tmp);
    # no row-group merges at checkpoints (see NO_VACUUM)
    root = duckdb.connect(":memory:", config={"temp_directory": f"{path}.tmp", "max_vacuum_tasks": NO_VACUUM})
    try:
        quoted = path.replace("'", "''")
        options = f"ROW_GROUP_SIZE {ROW_GROUP_ROWS}" + ("" if wal else ", RECOVERY_MODE no_wal_writes")
        root.execute(f"ATTACH '{quoted}' AS {_ident(catalog)} ({options})")
        root.execute(f"USE {_ident(catalog)}")
    except duckdb.Error as exc:
        root.close()
        raise _open_error(path, exc) from None
    return _Instance(root, catalog, wal)


def _open(path: str, read_only: bool, wal: bool = True) -> tuple[duckdb.DuckDBPyConnection, _Instance | None]:
    """A connection to ``path`` and, for a file held read-write in this process, the instance it belongs to
    (hand it back with :func:`_release`). ``wal``: see :func:`_attach` (for the first read-write open only)."""
    if read_only and path != ":memory:" and not Path(path).exists():
        raise SchemaError(f"{path} does not exist (nothing has been written there yet)")
    if path != ":memory:":
        with _INSTANCES_LOCK:
            inst = _INSTANCES.get(_key(path))
            if inst is None and not read_only:
                inst = _INSTANCES[_key(path)] = _attach(path, wal)
            if inst is not None:
                # This process already holds the file read-write (a notebook that ran configure() and now wants
                # to look, or a second writer): a connection of the open instance. A read-only Store still
                # refuses writes, because it was asked to be read-only.
                return inst.connect(), inst
    try:
        return _quiet(duckdb.connect(path, read_only=read_only)), None
    except duckdb.Error as exc:
        raise _open_error(path, exc) from None


def _release(path: str, inst: _Instance | None) -> None:
    if inst is None:
        return
    with _INSTANCES_LOCK:
        inst.users -= 1
        if inst.users <= 0:
            if _INSTANCES.get(_key(path)) is inst:
                del _INSTANCES[_key(path)]
            inst.root.close()


_LIVE_WRITERS: dict[str, Writer] = {}
"""The writer of each file this process holds read-write, by resolved path: a read-only Store of the same file
(which shares the open database) waits for it too, to see what it acknowledged."""


def _key(path: str) -> str:
    return str(Path(path).resolve()) if path != ":memory:" else path


def _unapplied(con: duckdb.DuckDBPyConnection, path: str) -> bool:
    """Whether the journal beside ``path`` has records the file does not."""
    wal = Journal(journal_dir(path))
    if not wal.files():
        return False
    try:
        row = con.execute("SELECT applied_lsn FROM _journal").fetchone()
    except duckdb.Error:
        return False
    applied = int(row[0]) if row else 0
    return any(lsn > applied for lsn, _ in wal.records(repair=False))


def _recover(con: duckdb.DuckDBPyConnection, path: str) -> tuple[duckdb.DuckDBPyConnection, _Instance | None]:
    """A read-only open found acknowledged writes that only the journal holds (the writing process died): no
    other process holds the file (else this open would have failed), so apply them with a brief read-write
    open, and reopen read-only. If the file cannot be written here, warn and show what it has."""
    con.close()
    try:
        Store(path).close()
        _log.warning(
            "otel-feedback: applied the writes %s held for %s (its writer had stopped)", journal_dir(path), path
        )
    except Exception as exc:  # a read-only file system, or someone took the file meanwhile
        _log.warning(
            "otel-feedback: %s holds writes not yet in %s, and they could not be applied now (%s); they are "
            "applied the next time the file is opened for writing (otel-feedback serve)",
            journal_dir(path),
            path,
            exc,
        )
    return _open(path, True)


def _governor(con: duckdb.DuckDBPyConnection, limit: str, target: str, idle_cache: str) -> MemoryGovernor:
    """A governor of the instance of ``con`` (see :mod:`.memory`), with DuckDB set to work within the target."""
    if parse_size(target) >= parse_size(limit):
        target = limit
    if parse_size(target) < MIN_MEMORY_BYTES:
        raise ConfigError(f"memory target {target} is too small: DuckDB needs at least 16MB")
    governor = MemoryGovernor(target, limit, parse_size(idle_cache), con.cursor, can_escalate=target != limit)
    # DuckDB's allocator hands freed memory back after a task that used over 128 MB: lower, so a checkpoint's or a
    # big query's peak does not stay (VmHWM under ingest 395-404 -> 331-352 MB at a 512MB limit, no more CPU)
    con.execute("SET allocator_flush_threshold = '16MB'")
    try:
        con.execute(f"SET memory_limit = '{target}'")
    except duckdb.OutOfMemoryException:
        raise ConfigError(
            f"memory target {target} is too small: DuckDB holds more than that with the file open"
        ) from None
    return governor


class Store:
    """An open otel-feedback database file."""

    def __init__(
        self,
        path: str | Path,
        *,
        read_only: bool = False,
        queue_rows: int = 200_000,
        commit_rows: int = 50_000,
        lockdown: bool = False,
        memory_limit: str | None = None,
        checkpoint_threshold: str | None = None,
        journal: bool = True,
        memory_target: str | None = None,
        idle_cache: str | None = None,
        threads: int | None = None,
    ) -> None:
        """``lockdown`` (for a server answering others' SQL) turns off all file and network access from SQL, for
        this process's whole database instance (DuckDB refuses to turn it back on while the database is open).
        ``memory_limit`` and ``checkpoint_threshold`` are DuckDB's settings of those names (sizes such as
        ``512MB``, validated by the caller), applied before the migrations so that one which rebuilds a large
        table stays within the limit. ``journal`` (file databases only) acknowledges writes once they are in the
        journal (``<path>.journal``) instead of after their DuckDB commit; see :mod:`.journal`.
        ``memory_target`` and ``idle_cache`` (sizes, with ``memory_limit``; read-write file databases only) let a
        :class:`~.memory.MemoryGovernor` run DuckDB within the target, with the limit for what needs more, and
        its cache of the file trimmed to ``idle_cache`` while no query runs. ``threads`` sets DuckDB's ``threads``
        for the whole instance (read-write opens only; default: DuckDB's, one per core); where this Store governs
        the instance's memory, that many while a query runs and one fewer otherwise (:meth:`.MemoryGovernor.use_threads`)."""
        from .._version import __version__

        self.path = str(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        self._closed = False
        self.memory: MemoryGovernor | None = None
        # Where this Store will own the journal, DuckDB need not write its WAL as well (see _attach).
        owns_journal = journal and not read_only and self.path != ":memory:" and _key(self.path) not in _LIVE_WRITERS
        self._con, self._instance = _open(self.path, read_only, wal=not owns_journal)
        if self._instance is not None:  # the file is held read-write in this process: its governor counts our queries
            self.memory = self._instance.memory
        try:
            if read_only:
                version = file_version(self._con)
                if version == 0:
                    raise SchemaError(f"{self.path} is not an otel-feedback database (no _migrations table)")
                check_version(version, self.path)
                if _key(self.path) not in _LIVE_WRITERS and _unapplied(self._con, self.path):
                    self._con, self._instance = _recover(self._con, self.path)
                self.writer: Writer | None = None
            else:
                for setting, value in (("memory_limit", memory_limit), ("checkpoint_threshold", checkpoint_threshold)):
                    if value and not (self.memory is not None and setting == "memory_limit"):  # the governor's stands
                        self._con.execute(f"SET {setting} = '{value}'")
                migrate(self._con, self.path, __version__)
                for _name, ddl in VIEWS:
                    self._con.execute(ddl)
                no_wal = self._instance is not None and not self._instance.wal
                if no_wal:  # the migrations and views into the file now, not at the first checkpoint
                    self._con.execute("CHECKPOINT")
                if lockdown:
                    # Not lock_configuration as well: the cache trim changes memory_limit while serving. Queries
                    # sent to a server are single SELECTs (checked with DuckDB's parser), which cannot SET.
                    self._con.execute("SET enable_external_access = false")
                # This Store governs the instance's memory if it is the first to ask (its writer maintains it).
                governs = self.memory is None and self._instance is not None
                if governs and memory_limit and memory_target and idle_cache is not None:
                    assert self._instance is not None
                    self.memory = self._instance.memory = _governor(self._con, memory_limit, memory_target, idle_cache)
                governs = governs and self.memory is not None
                if threads and governs:
                    assert self.memory is not None
                    self.memory.use_threads(threads)
                elif threads:
                    self._con.execute(f"SET threads = {int(threads)}")
                # The journal belongs to the first read-write Store of a file in this process. A second one shares
                # its database but not its journal (two would replay and delete each other's records): it
                # acknowledges after commit.
                known = self._instance.known if self._instance is not None else None
                if known is None:
                    known = Known.load(self._con)
                    if self._instance is not None:
                        self._instance.known = known
                wal = None
                if self.path != ":memory:" and _key(self.path) not in _LIVE_WRITERS:
                    if journal:
                        wal = Journal(journal_dir(self.path))
                        self._replay(wal, checkpoint=no_wal, known=known)
                    elif _unapplied(self._con, self.path):
                        raise SchemaError(
                            f"{journal_dir(self.path)} holds writes that are not in {self.path} yet; open it once "
                            "with the journal on (OTEL_FEEDBACK_JOURNAL=true) to apply them"
                        )
                checkpoint_bytes = None
                if no_wal:  # the writer checkpoints; one without the journal at every commit
                    checkpoint_bytes = parse_size(checkpoint_threshold or DEFAULT_CHECKPOINT) if wal is not None else 0
                self.writer = Writer(
                    self._con,
                    known=known,
                    queue_rows=queue_rows,
                    commit_rows=commit_rows,
                    journal=wal,
                    memory=self.memory if governs else None,
                    checkpoint_bytes=checkpoint_bytes,
                )
                if wal is not None:
                    _LIVE_WRITERS[_key(self.path)] = self.writer
                if self.memory is not None and not governs:  # its appends do not ask the governor for room
                    self.memory.other_writers += 1
        except BaseException:
            self._con.close()
            _release(self.path, self._instance)
            raise

    def _replay(self, wal: Journal, checkpoint: bool, known: Known) -> None:
        records, rows = replay(self._con, wal, checkpoint=checkpoint, known=known)
        if records:
            _log.warning(
                "otel-feedback: applied %d journal records (%d rows) that %s did not have yet "
                "(the last process stopped without finishing its writes)",
                records,
                rows,
                self.path,
            )

    # -- writing -------------------------------------------------------------------------------

    def _writer(self) -> Writer:
        if self.writer is None:
            raise StoreUnavailable(f"{self.path} is open read-only")
        return self.writer

    def submit(self, tables: Mapping[str, pa.Table]) -> Future[int]:
        """Queue rows; the future completes when they are committed. Never blocks."""
        return self._writer().submit(tables)

    def check_room(self, rows: int) -> None:
        """:class:`QueueFull` now if the writer's queue cannot take ``rows`` (checked again on submit)."""
        self._writer().check_room(rows)

    def append(self, tables: Mapping[str, pa.Table], timeout: float | None = 60.0) -> int:
        """Queue rows and wait until they are committed; the number of rows."""
        future = self.submit(tables)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise StoreUnavailable(f"the writer did not commit within {timeout} s") from None

    def call(self, fn: Any, timeout: float | None = 60.0) -> Any:
        """Run ``fn(connection)`` in a transaction on the writer thread and return its result."""
        return self._writer().call(fn).result(timeout)

    def flush(self, timeout_millis: float | None = 30_000) -> bool:
        """Wait until everything queued is committed; False on timeout."""
        return True if self.writer is None else self.writer.flush(timeout_millis)

    # -- reading -------------------------------------------------------------------------------

    def cursor(self, *, wait: bool = True) -> duckdb.DuckDBPyConnection:
        """A connection of its own for reading on the calling thread (close it when done). It sees every write
        acknowledged before the call: with the journal, this waits until DuckDB has them (a commit's time).
        ``wait=False`` inside :meth:`read` (which waited already, before the query counted as running: a query
        waiting for the writer while it counts as running would keep an append short of room waiting for it,
        :data:`.memory.WRITE_PATIENCE_S`)."""
        if wait:
            self._wait_applied()
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            cur = self._con.cursor()
        return self._instance.use(cur) if self._instance is not None else cur

    def _wait_applied(self) -> None:
        """Until DuckDB has every write acknowledged before now: of its own writer, and of the journaling writer of
        the file in this process when that is another Store's."""
        live = _LIVE_WRITERS.get(_key(self.path))
        for writer in (self.writer, live if live is not self.writer else None):
            if writer is not None and not writer.wait_applied():
                _log.warning("otel-feedback: the writer is behind by more than 10 s; this query may miss recent writes")

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Around a query's run: DuckDB's cache is not trimmed meanwhile (see :mod:`.memory`)."""
        return self.memory.reading() if self.memory is not None else contextlib.nullcontext()

    def read(self, work: Callable[[], T], sql: str | None = None) -> T:
        """``work()``, a query on cursors of this store, under :meth:`reading`; where DuckDB runs within a memory
        target, once more with the whole limit if it raised :class:`QueryOutOfMemory` (and, given its ``sql``,
        within the limit at once the next time)."""
        # Waiting for the writer first: a query counts as running only once it runs, so the append it waits for
        # does not make room beside it (and a trim due right after that append is not held back by it).
        self._wait_applied()
        if self.memory is None:
            return work()
        return self.memory.run(work, QueryOutOfMemory, key=sql)

    def query(
        self,
        sql: str,
        params: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        max_rows: int | None = None,
        timeout_ms: int | None = None,
    ) -> _query.Result:
        """Run one statement on a fresh cursor and return its rows."""

        def work() -> _query.Result:
            cur = self.cursor(wait=False)
            try:
                return _query.run(cur, sql, params, max_rows=max_rows, timeout_ms=timeout_ms)
            finally:
                cur.close()

        return self.read(work, sql)

    def arrow(self, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> pa.Table:
        """The full result of one statement as an Arrow table."""

        def work() -> pa.Table:
            cur = self.cursor(wait=False)
            try:
                return cur.sql(sql, params=params or None).to_arrow_table()
            except duckdb.Error as exc:
                raise _query.query_error(exc) from None
            finally:
                cur.close()

        return self.read(work, sql)

    def stream(
        self, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None, chunk_rows: int = 10_000
    ) -> tuple[list[str], list[str], Any]:
        """Columns, DuckDB type names and an iterator of row chunks (holds a cursor, and counts as a running query,
        until exhausted or closed)."""
        self._wait_applied()
        with contextlib.ExitStack() as running:
            running.enter_context(self.reading())
            columns, types, chunks = _query.stream(self.cursor(wait=False), sql, params, chunk_rows=chunk_rows)
            return columns, types, _until_done(chunks, running.pop_all())

    def batches(
        self, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None, batch_rows: int = 65_536
    ) -> tuple[pa.RecordBatchReader, list[str]]:
        """The result as a stream of Arrow record batches, and the names of its JSON-typed columns (counts as a
        running query until the reader is exhausted or closed)."""
        self._wait_applied()
        with contextlib.ExitStack() as running:
            running.enter_context(self.reading())
            cur = running.enter_context(contextlib.closing(self.cursor(wait=False)))
            try:
                rel = cur.sql(sql, params=params or None)
                json_cols = [name for name, t in zip(rel.columns, rel.types, strict=True) if str(t) == "JSON"]
                reader = rel.to_arrow_reader(batch_rows)
            except duckdb.Error as exc:
                raise _query.query_error(exc) from None
            return pa.RecordBatchReader.from_batches(reader.schema, _until_done(reader, running.pop_all())), json_cols

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self, timeout_millis: float | None = 30_000) -> bool:
        """Commit what is queued, stop the writer and close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        done = True
        if self.writer is not None:
            done = self.writer.close(timeout_millis)
            if self.memory is not None and self.writer._memory is None:
                self.memory.other_writers -= 1
            if _LIVE_WRITERS.get(_key(self.path)) is self.writer:
                del _LIVE_WRITERS[_key(self.path)]
            if not done:
                _log.error("otel-feedback: the writer did not finish within %s ms; not closing", timeout_millis)
                return False
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error as exc:
                _log.warning("otel-feedback: checkpoint at close failed: %s", exc)
        self._con.close()
        _release(self.path, self._instance)
        _SHARED.discard(self)
        return done

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _until_done(items: Any, running: contextlib.ExitStack) -> Iterator[Any]:
    """``items``, then ``running`` closed (the query's registration, its cursor), however the iteration ends."""
    with running:
        yield from items


class _Shared:
    """Stores shared inside one process, by resolved path, so the exporter and ``record_feedback``
    write through the same writer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, Store] = {}

    def get(self, path: str | Path, **kwargs: Any) -> Store:
        key = str(Path(path).resolve()) if str(path) != ":memory:" else ":memory:"
        with self._lock:
            store = self._stores.get(key)
            if store is None or store.closed:
                store = Store(path, **kwargs)
                self._stores[key] = store
            return store

    def discard(self, store: Store) -> None:
        with self._lock:
            for key, value in list(self._stores.items()):
                if value is store:
                    del self._stores[key]


_SHARED = _Shared()


@atexit.register
def _close_shared() -> None:
    """Close stores opened for in-process use at interpreter exit (commits what is queued, checkpoints)."""
    for store in list(_SHARED._stores.values()):
        store.close()


def shared_store(path: str | Path, **kwargs: Any) -> Store:
    """The process's read-write :class:`Store` for ``path``, opened on first use."""
    return _SHARED.get(path, **kwargs)
