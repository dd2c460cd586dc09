"""The journal (store/journal.py): writes are acknowledged once appended and fsynced there, DuckDB gets them
right after, and what a crash kept out of DuckDB is applied at the next open. Real files and real DuckDB; the
crash is a real ``kill -9`` of a child process whose DuckDB thread was held, so the rows it acknowledged
exist nowhere but in the journal.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from otel_feedback.errors import SchemaError
from otel_feedback.store import Store
from otel_feedback.store.journal import MAGIC, Journal, decode, encode, journal_dir
from otel_feedback.store.writer import Writer, replay
from tests.test_core_store import WAIT_S, Gate, count, feedback_table, span_table

ROOT = Path(__file__).resolve().parent.parent


def _kill9_once_ready(code: str) -> None:
    """A child process runs ``code`` (``Store``, ``Gate``, ``span_table`` and ``feedback_table`` at hand), prints
    ``ready`` and waits; the test kills it with SIGKILL."""
    script = textwrap.dedent(
        f"""
        import sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        from otel_feedback.store import Store
        from tests.test_core_store import Gate, span_table, feedback_table
        """
    )
    script += textwrap.dedent(code) + '\nprint("ready", flush=True)\nthreading.Event().wait(60)\n'
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"child said {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)


def _crash_after_acks(db: Path, jobs: int, *, hold_duckdb: bool = True) -> None:
    """A child process opens ``db``, holds its DuckDB thread (so nothing reaches DuckDB), submits ``jobs`` jobs of
    3 spans and 1 feedback record, and is killed with SIGKILL once all are acknowledged."""
    _kill9_once_ready(
        f"""
        store = Store({str(db)!r})
        if {hold_duckdb!r}:
            Gate(store)
        futures = [
            store.submit({{"span_log": span_table(3, f"{{i:04x}}"), "feedback_log": feedback_table([f"fb{{i}}"])}})
            for i in range({jobs})
        ]
        assert [f.result(30) for f in futures] == [4] * {jobs}
        """
    )


def test_journal_round_trips_a_job() -> None:
    tables = {"span_log": span_table(5, "a"), "feedback_log": feedback_table(["x", "y"])}
    back = decode(b"".join(encode(tables)))
    assert set(back) == set(tables)
    for name, table in tables.items():
        assert back[name].equals(table)


def test_acknowledged_while_duckdb_is_held_then_visible_to_the_next_query(tmp_path: Path) -> None:
    with Store(tmp_path / "a.duckdb") as store:
        gate = Gate(store)
        future = store.submit({"span_log": span_table(4, "h")})
        assert future.result(WAIT_S) == 4  # durable in the journal; DuckDB has not seen it
        assert store.writer is not None and store.writer.stats.commits == 0
        gate.release()
        assert count(store) == 4  # the query waits for what was acknowledged before it


def test_kill9_after_acknowledgement_loses_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "crash.duckdb"
    _crash_after_acks(db, 25)
    assert any(journal_dir(db).glob("*.log")), "the crash left the journal behind"
    with caplog.at_level(logging.WARNING, logger="otel_feedback"), Store(db) as store:
        assert count(store) == 75
        # feedback sequence numbers were given at journal time: the replay keeps them, gap-free, in order
        rows = store.query("SELECT seq, feedback_id FROM feedback_log ORDER BY seq").rows
        assert rows == [(i + 1, f"fb{i}") for i in range(25)]
        assert "applied 25 journal records (100 rows)" in caplog.text
        # writing goes on after the recovered rows, and numbers continue
        store.append({"feedback_log": feedback_table(["after"])})
        assert store.query("SELECT seq FROM feedback_log WHERE feedback_id = 'after'").rows == [(26,)]
    assert not journal_dir(db).exists(), "a clean close leaves no journal"
    with Store(db) as again:  # nothing is applied twice
        assert count(again) == 75 and count(again, "feedback_log") == 26


def test_a_write_cut_short_at_the_end_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "torn.duckdb"
    _crash_after_acks(db, 5)
    (last,) = sorted(journal_dir(db).glob("*.log"))
    with last.open("ab") as f:  # a record whose write the crash interrupted: header promises more than is there
        f.write(b"\x06\x00\x00\x00\x00\x00\x00\x00\xff\x00\x00\x00\x00\x00\x00\x00partial")
    with Store(db) as store:
        assert count(store) == 15


def test_a_journal_less_open_refuses_and_a_read_only_open_applies_the_journal_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a crash the file alone lacks what only the journal has: opening it without the journal is refused
    (it would write after the missing records); opening it to read applies the journal first, so a person
    looking at the file after a crash sees everything that was acknowledged."""
    db = tmp_path / "pending.duckdb"
    _crash_after_acks(db, 3)
    with pytest.raises(SchemaError, match="OTEL_FEEDBACK_JOURNAL=true"):
        Store(db, journal=False)
    with caplog.at_level(logging.WARNING, logger="otel_feedback"), Store(db, read_only=True) as ro:
        assert count(ro) == 9
    assert "applied the writes" in caplog.text
    assert not journal_dir(db).exists()
    with Store(db) as store:
        assert count(store) == 9


def test_rows_duckdb_refuses_after_acknowledgement_are_kept_aside_and_the_rest_goes_on(tmp_path: Path) -> None:
    """The checks before acknowledging catch missing columns and NULLs; a value DuckDB cannot convert is only
    found when applying. The record was acknowledged, so its rows are kept next to the journal, not dropped."""
    db = tmp_path / "refused.duckdb"
    with Store(db) as store:
        bad = span_table(2, "b")
        bad = bad.set_column(bad.schema.get_field_index("start_time"), "start_time", pa.array(["soon", "later"]))
        gate = Gate(store)
        good1 = store.submit({"span_log": span_table(3, "g")})
        refused = store.submit({"span_log": bad})
        good2 = store.submit({"span_log": span_table(4, "k")})
        assert [f.result(WAIT_S) for f in (good1, refused, good2)] == [3, 2, 4]
        gate.release()
        assert count(store) == 7
        assert store.writer is not None and store.writer.stats.failed_jobs == 1
        (kept,) = journal_dir(db).glob("rejected-*.arrows")
        assert decode(kept.read_bytes())["span_log"].column("start_time").to_pylist() == ["soon", "later"]
        assert "soon" in kept.with_suffix(".txt").read_text() or "Conversion" in kept.with_suffix(".txt").read_text()
    assert kept.exists(), "the refused rows stay for a person to look at"


def test_bad_rows_are_refused_before_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "checked.duckdb"
    with Store(db) as store:
        future = store.submit({"span_log": span_table(3, "n", null_name_at=1)})
        with pytest.raises(Exception, match=r"NOT NULL constraint failed: span_log.name \(1 NULL values\)"):
            future.result(WAIT_S)
        extra = span_table(1, "x").append_column("no_such_column", pa.array([1]))
        with pytest.raises(Exception, match="has no column 'no_such_column'"):
            store.submit({"span_log": extra}).result(WAIT_S)
        missing = span_table(1, "m").drop_columns(["kind"])
        with pytest.raises(Exception, match=r"span_log.kind \(column missing\)"):
            store.submit({"span_log": missing}).result(WAIT_S)
        assert store.writer is not None and store.writer.stats.journal_writes == 0


def test_without_the_journal_acknowledgement_waits_for_duckdb(tmp_path: Path) -> None:
    with Store(tmp_path / "nojournal.duckdb", journal=False) as store:
        gate = Gate(store)
        future = store.submit({"span_log": span_table(2, "w")})
        time.sleep(0.2)
        assert not future.done()
        gate.release()
        assert future.result(WAIT_S) == 2
    assert not journal_dir(tmp_path / "nojournal.duckdb").exists()


def test_acknowledgements_stop_while_duckdb_is_far_behind(tmp_path: Path) -> None:
    """Backpressure: at most ``lag_rows`` acknowledged rows wait for DuckDB (memory, and how long a query waits,
    stay bounded); the rest wait for their acknowledgement until DuckDB catches up."""
    db = tmp_path / "lag.duckdb"
    Store(db).close()
    con = duckdb.connect(str(db))
    journal = Journal(journal_dir(db))
    replay(con, journal)
    writer = Writer(con, queue_rows=10_000, commit_rows=1_000, journal=journal, lag_rows=30)
    try:
        release = threading.Event()
        writer.call(lambda c: release.wait(WAIT_S))
        futures = [writer.submit({"span_log": span_table(10, f"{i:02x}")}) for i in range(8)]
        deadline = time.monotonic() + WAIT_S
        while sum(f.done() for f in futures) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert sum(f.done() for f in futures) == 3  # 30 rows acknowledged, the other 50 held back
        release.set()
        assert [f.result(WAIT_S) for f in futures] == [10] * 8
        assert writer.flush(WAIT_S * 1000)
        assert con.execute("SELECT count(*) FROM span_log").fetchone() == (80,)
    finally:
        assert writer.close()
        con.close()


def test_journal_files_rotate_and_are_deleted_once_applied(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    journal = Journal(directory, rotate_bytes=2_000)
    journal.start(1)
    payload = encode({"span_log": span_table(5, "r")})
    for lsn in range(1, 6):
        journal.append([(lsn, payload)])
    files = journal.files()
    assert len(files) == 5 and all(f.read_bytes().startswith(MAGIC) for f in files)
    assert [lsn for lsn, _ in journal.records()] == [1, 2, 3, 4, 5]
    journal.release(3)
    assert len(journal.files()) == 2
    assert [lsn for lsn, _ in journal.records()] == [4, 5]
    journal.close(5)
    assert not directory.exists()


def test_feedback_seq_stays_unique_while_duckdb_applies_concurrently(tmp_path: Path) -> None:
    """Sequence numbers are given by the journal thread alone; the DuckDB thread applying earlier jobs at the
    same time must not hand out any again (it once wrote back a stale counter: copies of one record then shared
    a seq, and the feedback view counted them all). DuckDB applies every job at once here, to overlap the two."""
    db = tmp_path / "seq.duckdb"
    Store(db).close()
    con = duckdb.connect(str(db))
    journal = Journal(journal_dir(db))
    replay(con, journal)
    writer = Writer(con, queue_rows=100_000, commit_rows=1_000, journal=journal, apply_rows=1, apply_linger_s=0)
    try:
        with ThreadPoolExecutor(4) as pool:
            # each thread waits for its acknowledgement before the next, so journal batches stay small and keep
            # coming while DuckDB applies the ones before
            done = pool.map(
                lambda k: [
                    writer.submit({"feedback_log": feedback_table([f"s{k}-{i}"])}).result(WAIT_S) for i in range(150)
                ],
                range(4),
            )
            assert [n for acks in done for n in acks] == [1] * 600
        assert writer.flush(WAIT_S * 1000)
        rows = con.execute("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM feedback_log").fetchall()
        assert rows == [(600, 600, 1, 600)]
    finally:
        assert writer.close()
        con.close()


def test_records_reach_the_file_whole_through_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal writes a batch's parts as they are (writev, at most IOV_MAX buffers a call). A system call may
    write less than asked (a signal, a full disk): cut every call short at an odd size, and every byte still
    reaches the file once, in order, empty parts included."""
    from otel_feedback.store import journal as jmod

    real = os.writev
    calls = 0

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        nonlocal calls
        calls += 1
        budget, cut = 7_777, []
        for b in buffers:
            if budget <= 0:
                break
            cut.append(b[:budget])
            budget -= min(budget, b.nbytes)
        return real(fd, cut)

    monkeypatch.setattr(jmod.os, "writev", short_writev)
    parts = [os.urandom(n) for n in [0, 1, 100_000, *([700] * 2_500), 0, 300_000, 5]]
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        jmod._write_all(fd, [memoryview(p) for p in parts])
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(parts)
    assert calls > len(b"".join(parts)) // 7_777  # it really was cut short every time


def test_kill9_after_duckdb_applied_but_before_a_checkpoint_loses_nothing(tmp_path: Path) -> None:
    """DuckDB writes no WAL beside the journal: what it applied is only in memory until the writer checkpoints,
    so the journal files stay until then, even once full (rotated)."""
    db = tmp_path / "applied.duckdb"
    _kill9_once_ready(
        f"""
        store = Store({str(db)!r})
        store.writer._journal.rotate_bytes = 2_000  # every record fills a file
        for i in range(30):
            store.append({{"span_log": span_table(3, f"{{i:04x}}"), "feedback_log": feedback_table([f"fb{{i}}"])}})
        assert store.flush(30_000)
        assert store.query("SELECT count(*) FROM span_log").rows == [(90,)]
        assert store.writer.stats.checkpoints == 0, "the test needs DuckDB not to have checkpointed"
        assert len(store.writer._journal.files()) >= 30, "applied records' files were let go before a checkpoint"
        """,
    )
    with Store(db) as store:
        assert count(store) == 90 and count(store, "feedback_log") == 30
    with Store(db) as again:
        assert count(again) == 90


def test_the_writer_checkpoints_when_idle_and_then_lets_journal_files_go(tmp_path: Path) -> None:
    with Store(tmp_path / "idle.duckdb") as store:
        writer = store.writer
        assert writer is not None and writer._journal is not None
        writer._journal.rotate_bytes = 2_000
        writer._checkpoint_idle = 0.2
        for i in range(5):
            store.append({"span_log": span_table(3, f"i{i}")})
        deadline = time.monotonic() + WAIT_S
        while writer.stats.checkpoints == 0 or len(writer._journal.files()) > 1:
            assert time.monotonic() < deadline, (writer.stats.checkpoints, writer._journal.files())
            time.sleep(0.05)
        assert count(store) == 15


def test_a_second_writer_of_the_file_without_the_journal_is_durable_too(tmp_path: Path) -> None:
    """The first read-write Store of a file owns the journal (and DuckDB writes no WAL); a second one in the same
    process acknowledges only once a checkpoint has its rows in the file."""
    db = tmp_path / "second.duckdb"
    _kill9_once_ready(
        f"""
        first = Store({str(db)!r})
        second = Store({str(db)!r})
        assert second.writer._journal is None
        for i in range(4):
            second.append({{"span_log": span_table(2, f"s{{i}}")}})
        assert second.writer.stats.checkpoints >= 4
        """,
    )
    with Store(db) as store:
        assert count(store) == 8


def test_a_trickle_of_writes_does_not_keep_a_burst_from_its_checkpoint(tmp_path: Path) -> None:
    """Writes every 0.1 s would put the idle checkpoint off forever: the oldest unsaved write sets a deadline."""
    with Store(tmp_path / "trickle.duckdb") as store:
        writer = store.writer
        assert writer is not None
        writer._checkpoint_idle = 5.0
        writer._checkpoint_max_age = 0.5
        store.append({"span_log": span_table(2_000, "burst")})
        deadline = time.monotonic() + WAIT_S
        i = 0
        while writer.stats.checkpoints == 0:
            assert time.monotonic() < deadline, "no checkpoint under a trickle of writes"
            store.append({"feedback_log": feedback_table([f"t{i}"])})
            i += 1
            time.sleep(0.1)
        assert i < 30  # within about the deadline, not after the trickle ends


def test_kill9_with_retried_spans_and_records_keeps_their_copies(tmp_path: Path) -> None:
    """Copies of spans and records (a client's retries) go through the journal's replay like every row: after a
    kill -9 before any checkpoint, the copies kept are those the logs hold, and the views show each once."""
    db = tmp_path / "copies.duckdb"
    _kill9_once_ready(
        f"""
        store = Store({str(db)!r})
        for i in range(12):  # every job sent twice over: spans 0..2 of tag i % 4, record fb(i % 5)
            store.append({{"span_log": span_table(3, f"{{i % 4:04x}}"), "feedback_log": feedback_table([f"fb{{i % 5}}"])}})
        twice = __import__("pyarrow").concat_tables([span_table(2, "dd"), span_table(2, "dd")])
        store.append({{"span_log": twice}})  # twice in one request
        assert store.flush(30_000)
        assert store.writer.stats.checkpoints == 0, "the test needs DuckDB not to have checkpointed"
        """,
    )
    with Store(db) as store:
        assert count(store) == 40 and count(store, "feedback_log") == 12
        assert store.query("SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans").rows == [(14, 14)]
        assert store.query("SELECT count(*) FROM feedback").rows == [(5,)]
        rebuilt = (
            "SELECT trace_id, span_id, received_at FROM span_log WHERE (trace_id, span_id) IN "
            "(SELECT trace_id, span_id FROM span_log GROUP BY ALL HAVING count(*) > 1) ORDER BY ALL"
        )
        kept = "SELECT trace_id, span_id, received_at FROM span_copies ORDER BY ALL"
        assert store.query(kept).rows == store.query(rebuilt).rows and len(store.query(kept).rows) == 40
        assert store.query("SELECT count(*) FROM feedback_copies").rows == [(12,)]
        ties = "SELECT count(*) FROM (SELECT trace_id, span_id, received_at FROM span_log GROUP BY ALL HAVING count(*) > 1)"
        assert store.query(ties).rows == [(0,)]


def test_checkpoints_go_on_while_a_query_older_than_the_last_apply_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each apply records its journal LSN; DuckDB refuses a CHECKPOINT while a transaction older than an UPDATE's
    commit runs, so the record must not be an UPDATE: with one, every checkpoint failed for as long as any query
    ran beside ingest (a streamed result holds its query's transaction open here)."""
    with Store(tmp_path / "busy.duckdb", checkpoint_threshold="1KB") as store:
        writer = store.writer
        assert writer is not None
        store.append({"span_log": span_table(2_000, "a")})
        store.flush()
        _, _, chunks = store.stream("SELECT span_id FROM span_log", chunk_rows=100)
        try:
            assert len(next(chunks)) == 100  # the query runs, from before the applies below
            before = writer.stats.checkpoints
            for i in range(3):
                store.append({"span_log": span_table(50, f"b{i}")})
                store.flush()
            deadline = time.monotonic() + WAIT_S
            while writer.stats.checkpoints < before + 3:
                assert time.monotonic() < deadline, (writer.stats.checkpoints, writer._checkpoint_error)
                time.sleep(0.05)
            assert writer._checkpoint_error is None
            assert sum(len(c) for c in chunks) == 1_900  # the query saw the file as it was when it started
        finally:
            chunks.close()
        assert "checkpoint failed" not in caplog.text
        assert count(store) == 2_150
    with Store(tmp_path / "busy.duckdb") as again:
        assert again.query("SELECT applied_lsn FROM _journal").rows == [(4,)]
