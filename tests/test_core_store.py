"""The store: migrations recorded in ``_migrations``, version checks, the single writer (group commit,
bounded queue, bad batches isolated, idempotent close) and how opening fails. Real DuckDB files only.

The writer is held still where a test needs a known queue state by a ``writer.call(fn)`` job whose
``fn`` waits on a ``threading.Event``; nothing here sleeps to synchronise, and every wait is bounded.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pytest

from otel_feedback import __version__
from otel_feedback.errors import (
    DatabaseLocked,
    InvalidRequest,
    OtelFeedbackError,
    QueueFull,
    SchemaError,
    StoreUnavailable,
)
from otel_feedback.feedback import to_table
from otel_feedback.model import SPAN_SCHEMA, FeedbackRow
from otel_feedback.store import ROW_GROUP_ROWS, SCHEMA_VERSION, Store
from otel_feedback.store.schema import MIGRATIONS, Migration, migrate

APPS = Path(__file__).resolve().parent / "apps"
WAIT_S = 30.0
"""Upper bound of every wait (a failure bound, never a synchronisation)."""

T0 = 1_750_000_000_000_000_000


# -- helpers -----------------------------------------------------------------------------------------


def span_table(n: int, prefix: str, *, null_name_at: int | None = None) -> pa.Table:
    """``n`` valid ``span_log`` rows whose span ids start with ``prefix`` (one NULL name if asked)."""
    cols: dict[str, list[Any]] = {name: [None] * n for name in SPAN_SCHEMA.names}
    cols.update(
        trace_id=[f"{prefix}{i:0{32 - len(prefix)}x}" for i in range(n)],
        span_id=[f"{prefix}{i:0{16 - len(prefix)}x}" for i in range(n)],
        name=[None if i == null_name_at else f"span {i}" for i in range(n)],
        kind=["INTERNAL"] * n,
        start_time=[T0 + i for i in range(n)],
        end_time=[T0 + i + 1_000_000 for i in range(n)],
        duration_ms=[1.0] * n,
        status_code=["UNSET"] * n,
        attributes=["{}"] * n,
        resource_attributes=["{}"] * n,
        dropped_attributes_count=[0] * n,
        dropped_events_count=[0] * n,
        dropped_links_count=[0] * n,
        received_at=[T0] * n,
    )
    return pa.Table.from_pydict(cols, schema=SPAN_SCHEMA)


def feedback_table(ids: list[str]) -> pa.Table:
    return to_table(
        [
            FeedbackRow(
                feedback_id=f,
                channel="test",
                received_at_ns=T0,
                feedback_time_ns=T0,
                trace_id="ab" * 16,
                span_id="cd" * 8,
                attributes={"user_feedback": "positive"},
            )
            for f in ids
        ]
    )


def count(store: Store, table: str = "span_log") -> int:
    return store.query(f"SELECT count(*) FROM {table}").rows[0][0]


class Gate:
    """Holds the writer thread inside a ``call`` job until :meth:`release`."""

    def __init__(self, store: Store) -> None:
        assert store.writer is not None
        self.entered = threading.Event()
        self._release = threading.Event()

        def hold(con: duckdb.DuckDBPyConnection) -> str:
            self.entered.set()
            if not self._release.wait(WAIT_S):
                raise TimeoutError("the test never released the writer")
            return "held"

        self.future: Future[Any] = store.writer.call(hold)
        assert self.entered.wait(WAIT_S), "the writer did not pick up the gate job"

    def release(self) -> None:
        self._release.set()
        assert self.future.result(WAIT_S) == "held"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.duckdb"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    s = Store(path)
    yield s
    s.close()


# -- schema and migrations ---------------------------------------------------------------------------


def test_schema_version_is_recorded_in_migrations(store: Store) -> None:
    rows = store.query("SELECT version, name, package_version FROM _migrations ORDER BY version").rows
    assert rows == [(i, m.name, __version__) for i, m in enumerate(MIGRATIONS, start=1)]
    assert SCHEMA_VERSION == len(MIGRATIONS) == rows[-1][0]
    tables = {r[0] for r in store.query("SELECT table_name FROM duckdb_tables()").rows}
    assert {"span_log", "log_records", "feedback_log", "feedback_config", "_migrations"} <= tables


def test_reopening_a_current_file_applies_nothing_and_keeps_the_data(path: Path) -> None:
    with Store(path) as s:
        s.append({"span_log": span_table(3, "a")})
    with Store(path) as s:
        assert s.query("SELECT count(*) FROM _migrations").rows == [(SCHEMA_VERSION,)]
        assert count(s) == 3
    with Store(path, read_only=True) as s:
        assert count(s) == 3


def test_a_newer_migration_list_migrates_an_existing_file(path: Path) -> None:
    with Store(path) as s:
        s.append({"span_log": span_table(2, "b")})
    extended = (
        *MIGRATIONS,
        Migration("9999_test_extra", "CREATE TABLE extra (x INTEGER); ALTER TABLE span_log ADD COLUMN note VARCHAR;"),
    )
    applied_hook: list[str] = []
    con = duckdb.connect(str(path))
    try:
        assert migrate(con, str(path), "9.9.9", extended, on_applied=lambda m: applied_hook.append(m.name)) == [
            "9999_test_extra"
        ]
        assert applied_hook == ["9999_test_extra"]
        assert con.execute("SELECT version, name, package_version FROM _migrations ORDER BY version").fetchall()[
            -1
        ] == (SCHEMA_VERSION + 1, "9999_test_extra", "9.9.9")
        assert con.execute("SELECT count(*), count(note) FROM span_log").fetchone() == (2, 0)
        assert con.execute("SELECT count(*) FROM extra").fetchone() == (0,)
        # running it again applies nothing
        assert migrate(con, str(path), "9.9.9", extended) == []
    finally:
        con.close()


def test_a_failing_migration_is_rolled_back_whole(path: Path) -> None:
    Store(path).close()
    broken = (*MIGRATIONS, Migration("0099_broken", "CREATE TABLE half (x INTEGER); SELECT * FROM no_such_table;"))
    con = duckdb.connect(str(path))
    try:
        with pytest.raises(duckdb.Error):
            migrate(con, str(path), "9.9.9", broken)
        assert con.execute("SELECT max(version) FROM _migrations").fetchone() == (SCHEMA_VERSION,)
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'half'").fetchone() == (0,)
    finally:
        con.close()


def test_a_file_from_a_newer_version_is_refused(path: Path) -> None:
    Store(path).close()
    con = duckdb.connect(str(path))
    con.execute(
        "INSERT INTO _migrations (version, name, package_version) VALUES (?, 'from_the_future', '99.0')",
        [SCHEMA_VERSION + 1],
    )
    con.close()
    for read_only in (False, True):
        with pytest.raises(SchemaError) as info:
            Store(path, read_only=read_only)
        message = str(info.value)
        assert "written by a newer version" in message
        assert f"schema version {SCHEMA_VERSION + 1}" in message and str(path) in message
    # the refusal left the file untouched and closed: it opens again in this process
    con = duckdb.connect(str(path))
    assert con.execute("SELECT max(version) FROM _migrations").fetchone() == (SCHEMA_VERSION + 1,)
    con.close()


def test_read_only_on_a_missing_file_is_a_schema_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(SchemaError, match="does not exist"):
        Store(missing, read_only=True)
    assert not missing.exists()


def test_read_only_on_a_foreign_duckdb_file_is_a_schema_error(tmp_path: Path) -> None:
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    with pytest.raises(SchemaError, match="not an otel-feedback database"):
        Store(other, read_only=True)


def test_a_read_only_store_refuses_writes(path: Path) -> None:
    Store(path).close()
    with Store(path, read_only=True) as s:
        with pytest.raises(StoreUnavailable, match="read-only"):
            s.submit({"span_log": span_table(1, "c")})


def test_read_only_open_while_this_process_writes_the_file_shares_it(path: Path) -> None:
    """A notebook that ran ``configure(path)`` and then opens the file to look at it: the process already
    holds it read-write, and DuckDB refuses a second, differently configured instance. The read-only Store
    shares the open one instead, sees what was committed, and still refuses writes."""
    writer = Store(path)
    try:
        writer.submit({"span_log": span_table(3, "r")}).result(30)
        with Store(path, read_only=True) as reader:
            assert reader.query("SELECT count(*) FROM span_log").rows == [(3,)]
            with pytest.raises(StoreUnavailable, match="read-only"):
                reader.submit({"span_log": span_table(1, "x")})
    finally:
        writer.close()


def test_the_file_is_written_in_small_row_groups(path: Path) -> None:
    """Row groups of ``ROW_GROUP_ROWS`` rows, not DuckDB's 122,880: a checkpoint then rewrites no group twice."""
    with Store(path) as s:
        for i in range(3):
            s.submit({"span_log": span_table(15_000, f"g{i}")}).result(WAIT_S)
    con = duckdb.connect(str(path), read_only=True)
    try:
        groups = con.execute(
            "SELECT row_group_id, max(\"count\") FROM pragma_storage_info('span_log') GROUP BY 1"
        ).fetchall()
    finally:
        con.close()
    assert len(groups) >= 45_000 // ROW_GROUP_ROWS
    assert all(rows <= ROW_GROUP_ROWS for _, rows in groups)


def test_spills_go_next_to_the_file(path: Path) -> None:
    with Store(path) as s:
        assert s.query("SELECT current_setting('temp_directory')").rows == [(f"{path}.tmp",)]


def test_two_read_write_stores_of_one_file_share_its_instance_until_both_close(path: Path) -> None:
    first = Store(path)
    second = Store(path)
    try:
        first.submit({"span_log": span_table(2, "a")}).result(WAIT_S)
        assert second.query("SELECT count(*) FROM span_log").rows == [(2,)]
        first.close()
        assert second.query("SELECT count(*) FROM span_log").rows == [(2,)]
    finally:
        first.close()
        second.close()
    # released: another process can open the file now
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import duckdb; print(duckdb.connect({str(path)!r}).execute('SELECT count(*) FROM span_log').fetchone()[0])",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert out.stdout.strip() == "2", out.stderr


# -- the writer ----------------------------------------------------------------------------------------


def test_concurrent_submits_from_threads_all_commit(store: Store) -> None:
    threads_n, jobs_per_thread, rows_per_job = 8, 40, 7
    futures: queue.Queue[Future[int]] = queue.Queue()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for j in range(jobs_per_thread):
                futures.put(store.submit({"span_log": span_table(rows_per_job, f"{t:x}{j:02x}")}))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive()
    assert errors == []
    results = [futures.get_nowait().result(WAIT_S) for _ in range(threads_n * jobs_per_thread)]
    assert results == [rows_per_job] * (threads_n * jobs_per_thread)
    total = threads_n * jobs_per_thread * rows_per_job
    assert store.query("SELECT count(*), count(DISTINCT span_id) FROM span_log").rows == [(total, total)]
    assert store.writer is not None and store.writer.stats.rows == total
    assert store.writer.stats.jobs == threads_n * jobs_per_thread
    assert store.writer.queued_rows == 0


def test_group_commit_takes_everything_queued_in_one_transaction(store: Store) -> None:
    assert store.writer is not None
    stats = store.writer.stats
    gate = Gate(store)
    commits_before = stats.commits
    futures = [store.submit({"span_log": span_table(10, f"{i:02x}")}) for i in range(20)]
    assert store.writer.queued_rows == 200
    # acknowledged while DuckDB's thread is held: they are durable in the journal
    assert [f.result(WAIT_S) for f in futures] == [10] * 20
    assert stats.commits == commits_before
    gate.release()
    assert store.flush(WAIT_S * 1000)
    assert stats.commits - commits_before == 1
    assert count(store) == 200


def test_group_commit_respects_commit_rows(path: Path) -> None:
    with Store(path, queue_rows=1000, commit_rows=25) as s:
        assert s.writer is not None
        gate = Gate(s)
        before = s.writer.stats.commits
        futures = [s.submit({"span_log": span_table(10, f"{i:02x}")}) for i in range(10)]
        assert [f.result(WAIT_S) for f in futures] == [10] * 10
        gate.release()
        assert s.flush(WAIT_S * 1000)
        assert s.writer.stats.commits - before == 5  # two 10-row jobs fit in 25 rows, three do not
        assert count(s) == 100


def test_a_full_queue_refuses_with_queue_full_and_keeps_what_it_accepted(path: Path) -> None:
    with Store(path, queue_rows=30, commit_rows=10) as s:
        assert s.writer is not None
        gate = Gate(s)
        try:
            accepted = [s.submit({"span_log": span_table(10, f"{i:02x}")}) for i in range(3)]
            with pytest.raises(QueueFull, match="OTEL_FEEDBACK_QUEUE_ROWS=30") as info:
                s.submit({"span_log": span_table(10, "ff")})
            assert info.value.retryable and isinstance(info.value, StoreUnavailable)
            with pytest.raises(QueueFull):
                s.submit({"span_log": span_table(1, "fe")})
            assert s.writer.stats.rejected_full == 2
            assert s.writer.queued_rows == 30
        finally:
            gate.release()
        assert [f.result(WAIT_S) for f in accepted] == [10, 10, 10]
        assert s.flush(WAIT_S * 1000)
        assert count(s) == 30
        assert s.query("SELECT count(*) FROM span_log WHERE span_id LIKE 'f%'").rows == [(0,)]
        # with the queue drained, new work is taken again
        assert s.append({"span_log": span_table(5, "ee")}) == 5


def test_a_job_larger_than_the_queue_is_taken_when_the_queue_is_empty(path: Path) -> None:
    with Store(path, queue_rows=10, commit_rows=10) as s:
        assert s.append({"span_log": span_table(25, "d")}) == 25
        assert count(s) == 25


def test_one_bad_batch_does_not_fail_its_neighbours(store: Store) -> None:
    assert store.writer is not None
    gate = Gate(store)
    good1 = store.submit({"span_log": span_table(4, "1"), "feedback_log": feedback_table(["f1", "f2"])})
    bad = store.submit({"span_log": span_table(4, "2", null_name_at=2)})  # NULL in a NOT NULL column
    half_bad = store.submit(
        {
            "span_log": span_table(3, "3"),
            "feedback_log": feedback_table(["f3"]).set_column(0, "feedback_id", pa.array([None], pa.string())),
        }
    )
    good2 = store.submit({"span_log": span_table(5, "4"), "feedback_log": feedback_table(["f4", "f5", "f6"])})
    gate.release()
    assert good1.result(WAIT_S) == 6
    assert good2.result(WAIT_S) == 8
    for f in (bad, half_bad):
        with pytest.raises(OtelFeedbackError):
            f.result(WAIT_S)
    assert store.writer.stats.failed_jobs == 2
    ids = [r[0] for r in store.query("SELECT span_id FROM span_log ORDER BY span_id").rows]
    assert [i[0] for i in ids] == ["1"] * 4 + ["4"] * 5  # nothing of either failed job was committed
    # feedback sequence numbers stay gap-free and in arrival order across the failures
    assert store.query("SELECT seq, feedback_id FROM feedback_log ORDER BY seq").rows == [
        (1, "f1"),
        (2, "f2"),
        (3, "f4"),
        (4, "f5"),
        (5, "f6"),
    ]


def test_a_batch_breaking_a_constraint_is_a_permanent_invalid_request(store: Store) -> None:
    """Bad rows are the caller's fault: retrying cannot help, so the error is InvalidRequest (not the
    retryable WriteFailed), and its message says what DuckDB refused."""
    future = store.submit({"span_log": span_table(3, "5", null_name_at=1)})
    with pytest.raises(OtelFeedbackError) as info:
        future.result(WAIT_S)
    assert isinstance(info.value, InvalidRequest), f"{type(info.value).__name__}: {info.value}"
    assert not info.value.retryable
    assert "NOT NULL constraint failed" in str(info.value) and "name" in str(info.value)
    assert store.append({"span_log": span_table(2, "6")}) == 2  # the writer is fine afterwards


def test_a_failing_call_is_rolled_back_and_the_writer_keeps_going(store: Store) -> None:
    def half_then_fail(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("CREATE TABLE scratch (x INTEGER)")
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        store.call(half_then_fail, timeout=WAIT_S)
    assert store.query("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'scratch'").rows == [(0,)]
    assert store.call(lambda con: con.execute("SELECT 41 + 1").fetchone()[0], timeout=WAIT_S) == 42
    assert store.append({"span_log": span_table(2, "9")}) == 2


def test_close_is_idempotent_commits_what_was_queued_and_then_refuses(path: Path) -> None:
    s = Store(path)
    futures = [s.submit({"span_log": span_table(50, f"{i:02x}")}) for i in range(20)]
    assert s.close() is True
    assert all(f.done() for f in futures)
    assert [f.result(0) for f in futures] == [50] * 20
    assert s.close() is True
    assert s.closed
    with pytest.raises(StoreUnavailable):
        s.submit({"span_log": span_table(1, "a")})
    with pytest.raises(StoreUnavailable):
        s.query("SELECT 1")
    with Store(path, read_only=True) as r:
        assert count(r) == 1000


def test_empty_and_unknown_tables(store: Store) -> None:
    assert store.submit({"span_log": span_table(0, "a")}).result(WAIT_S) == 0
    with pytest.raises(ValueError, match="unknown table 'spans'"):
        store.submit({"spans": span_table(1, "a")})


def test_writer_arguments_are_validated_before_anything_opens(path: Path) -> None:
    with pytest.raises(ValueError, match="commit_rows"):
        Store(path, queue_rows=10, commit_rows=11)
    # the failed construction did not leave the file held open
    with Store(path) as s:
        assert count(s) == 0


def test_feedback_json_round_trips(store: Store) -> None:
    store.append({"feedback_log": feedback_table(["x"])})
    attrs = store.query("SELECT attributes FROM feedback_log").rows[0][0]
    assert orjson.loads(attrs) == {"user_feedback": "positive"}


# -- another process holds the file --------------------------------------------------------------------


@pytest.fixture
def held(path: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``tests/apps/hold_lock.py`` holding ``path`` read-write; killed by its PID afterwards."""
    err = open(tmp_path / "holder.err", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(APPS / "hold_lock.py"), str(path)],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        lines.put(proc.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        try:
            line = lines.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError("hold_lock.py did not report within the time bound") from None
        assert line.startswith("HELD "), (line, (tmp_path / "holder.err").read_text())
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
        reader.join(WAIT_S)
        err.close()


def test_database_locked_when_another_process_holds_the_file(path: Path, held: subprocess.Popen[str]) -> None:
    for read_only in (False, True):
        with pytest.raises(DatabaseLocked) as info:
            Store(path, read_only=read_only)
        assert info.value.retryable
        assert "in use by another process" in str(info.value)
    os.kill(held.pid, signal.SIGKILL)
    held.wait(WAIT_S)
    with Store(path) as s:  # free again once that process is gone
        assert count(s) == 0


def test_database_locked_names_the_pid_of_the_holder(path: Path, held: subprocess.Popen[str]) -> None:
    """DuckDB's lock error says which PID holds the file; the message passes it on."""
    with pytest.raises(DatabaseLocked) as info:
        Store(path, read_only=True)
    assert f"(PID {held.pid})" in str(info.value)
