"""DuckDB's memory in a server (``store/memory.py``): the cache of the file trimmed on the writer thread while no
query runs, and queries (and appends) that run out of memory within the target run again within the limit.

Real DuckDB files, real writers; what is measured is DuckDB's own accounting (``duckdb_memory()``) and setting,
read on a cursor of the same database instance.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from otel_feedback.config import ConfigError, Settings, parse_size
from otel_feedback.errors import QueryOutOfMemory
from otel_feedback.store import Store
from otel_feedback.store.memory import MARGIN_BYTES, SPARING_ROOM_BYTES, MemoryGovernor
from tests.test_core_store import span_table

WAIT_S = 30.0
"""Upper bound of every wait (a failure bound, never a synchronisation)."""

MB = 1_000_000


def bulky(n: int, prefix: str) -> pa.Table:
    """``n`` span rows with ~1 KB of incompressible text each (names: DuckDB keeps the blocks of that column in
    memory after a checkpoint writes them; zstd-compressed columns it does not)."""
    table = span_table(n, prefix)
    names = [os.urandom(500).hex() for _ in range(n)]
    return table.set_column(table.schema.get_field_index("name"), "name", pa.array(names, pa.string()))


def memory(store: Store, tag: str) -> int:
    """DuckDB's bytes under ``tag``, read without counting as a query (a raw cursor of the instance)."""
    cur = store.cursor()
    try:
        return int(
            cur.execute(
                "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = ?", [tag]
            ).fetchall()[0][0]
        )
    finally:
        cur.close()


def setting(store: Store, name: str) -> str:
    cur = store.cursor()
    try:
        return str(cur.execute("SELECT current_setting(?)", [name]).fetchall()[0][0])
    finally:
        cur.close()


def shown(size: str) -> str:
    """How DuckDB shows a memory limit of ``size`` (``512MB`` is ``488.2 MiB``)."""
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{size}'")
        return str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
    finally:
        con.close()


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.05)


def ingest(store: Store, batches: int, rows: int = 10_000, tag: str = "b") -> None:
    for i in range(batches):
        store.append({"span_log": bulky(rows, f"{tag}{i:02x}")}, timeout=WAIT_S)


def open_store(path: Path, idle_cache: str, checkpoint_threshold: str = "4MB", target: str = "512MB") -> Store:
    return Store(
        path,
        memory_limit="512MB",
        memory_target=target,
        checkpoint_threshold=checkpoint_threshold,
        idle_cache=idle_cache,
    )


def test_blocks_written_by_ingest_are_handed_back_once_no_query_runs(tmp_path: Path) -> None:
    cached: dict[str, int] = {}
    for keep in ("4MB", "1GB"):
        with open_store(tmp_path / f"keep-{keep}.duckdb", keep) as s:
            assert s.memory is not None
            ingest(s, 6)
            s.flush()
            trims = s.memory.trims
            wait_for(lambda s=s, trims=trims: s.memory.trims > trims, "a trim after the last write")
            cached[keep] = memory(s, "BASE_TABLE")
            assert setting(s, "memory_limit") == shown("512MB")  # the limit is back
    # 60,000 rows of ~1 KB: DuckDB keeps tens of MB of the blocks it wrote unless trimmed
    assert cached["1GB"] > 20 * MB, cached
    assert cached["4MB"] <= 4 * MB + MARGIN_BYTES, cached


def test_no_trim_while_a_query_runs_and_one_right_after(tmp_path: Path) -> None:
    with open_store(tmp_path / "q.duckdb", "0MB") as s:
        assert s.memory is not None
        ingest(s, 2, tag="a")
        wait_for(lambda: s.memory.trims > 0, "the first trim")
        with s.reading():
            trims = s.memory.trims
            ingest(s, 4, tag="c")  # written and checkpointed while the query "runs"
            s.flush()
            time.sleep(2 * s.memory.interval_s)
            assert s.memory.trims == trims, "trimmed during a query"
            assert memory(s, "BASE_TABLE") > 10 * MB
            assert setting(s, "memory_limit") == shown("512MB")
        wait_for(lambda: s.memory.trims > trims, "a trim once the query ended")
        assert memory(s, "BASE_TABLE") <= MARGIN_BYTES


def test_the_blocks_a_checkpoint_wrote_are_handed_back_right_after_it(tmp_path: Path) -> None:
    """Not up to a second later with the periodic trim (turned off here): at once, unless a query runs."""
    with open_store(tmp_path / "c.duckdb", "0MB") as s:
        assert s.memory is not None and s.writer is not None
        s.memory.interval_s = 3600.0  # no periodic trims: what follows is the checkpoint's own
        ingest(s, 1, tag="a")
        s.flush()
        wait_for(lambda: s.memory.trims > 0, "the first trim")
        trims, checkpoints = s.memory.trims, s.writer.stats.checkpoints
        ingest(s, 4, tag="b")  # ~40 MB of rows: checkpointed every 4MB
        s.flush()
        wait_for(lambda: s.writer.stats.checkpoints > checkpoints, "a checkpoint")
        wait_for(lambda: memory(s, "BASE_TABLE") <= MARGIN_BYTES, "the checkpoints' blocks handed back")
        assert s.memory.trims > trims
        with s.reading():  # a query runs: the checkpoints leave the cache alone
            trims, checkpoints = s.memory.trims, s.writer.stats.checkpoints
            ingest(s, 4, tag="c")
            s.flush()
            wait_for(lambda: s.writer.stats.checkpoints > checkpoints + 1, "checkpoints during the query")
            assert s.memory.trims == trims
            assert memory(s, "BASE_TABLE") > 10 * MB


def test_a_query_starting_during_a_trim_waits_for_the_full_limit(tmp_path: Path) -> None:
    """Queries that load blocks, each trimmed away right after: every query sees the whole limit, however its
    start falls against the writer's trims."""
    with open_store(tmp_path / "race.duckdb", "0MB") as s:
        assert s.memory is not None
        ingest(s, 3)
        s.call(lambda con: con.execute("CHECKPOINT"))
        s.memory.interval_s = s.memory.grace_s = 0.01
        seen: set[str] = set()
        evicted = s.memory.evicted_bytes
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            res = s.query("SELECT current_setting('memory_limit'), count(*) FROM span_log WHERE name > 'f'")
            seen.add(res.rows[0][0])
            time.sleep(random.uniform(0.005, 0.02))  # trims run once the last query ended interval_s ago
        assert s.memory.trims >= 10 and s.memory.evicted_bytes > evicted + 10 * MB, s.memory.trims  # the race was on
    assert seen == {shown("512MB")}, seen


def test_a_trim_never_spills_rows_not_yet_checkpointed(tmp_path: Path) -> None:
    path = tmp_path / "spill.duckdb"
    with open_store(path, "0MB", checkpoint_threshold="1GB") as s:
        assert s.memory is not None
        for i in range(8):  # small appends stay in memory (IN_MEMORY_TABLE) until a checkpoint
            s.append({"span_log": bulky(3_000, f"s{i:02x}")}, timeout=WAIT_S)
        held = memory(s, "IN_MEMORY_TABLE")
        assert held > 10 * MB
        trims = s.memory.trims
        s.query("SELECT 1")  # a query's end makes a trim due
        wait_for(lambda: s.memory.trims > trims, "a trim")
        assert memory(s, "IN_MEMORY_TABLE") == held
        cur = s.cursor()
        try:
            assert cur.execute("SELECT count(*) FROM duckdb_temporary_files()").fetchall() == [(0,)]
        finally:
            cur.close()


def test_stores_without_a_memory_limit_or_in_memory_do_not_trim(tmp_path: Path) -> None:
    with Store(tmp_path / "plain.duckdb") as s:
        assert s.memory is None
    with Store(":memory:", memory_limit="256MB", memory_target="128MB", idle_cache="0MB") as s:
        assert s.memory is None


def test_a_streamed_result_counts_as_a_running_query_until_exhausted(tmp_path: Path) -> None:
    with open_store(tmp_path / "stream.duckdb", "0MB") as s:
        assert s.memory is not None
        ingest(s, 1)
        _, _, chunks = s.stream("SELECT span_id FROM span_log", chunk_rows=1000)
        assert s.memory.readers == 1
        assert sum(len(c) for c in chunks) == 10_000
        assert s.memory.readers == 0
        reader, _ = s.batches("SELECT span_id FROM span_log", batch_rows=1000)
        assert s.memory.readers == 1
        assert reader.read_all().num_rows == 10_000
        assert s.memory.readers == 0


def test_idle_cache_setting() -> None:
    assert Settings.load(env={}).idle_cache == "16MB"
    assert Settings.load(env={"OTEL_FEEDBACK_IDLE_CACHE": "64MB"}).idle_cache == "64MB"
    with pytest.raises(ConfigError, match="OTEL_FEEDBACK_IDLE_CACHE must be a size"):
        Settings.load(env={"OTEL_FEEDBACK_IDLE_CACHE": "lots"})
    assert parse_size("16MB") == 16 * MB and parse_size("1GiB") == 2**30
    with pytest.raises(ValueError):
        parse_size("16")


def test_memory_settings() -> None:
    assert Settings.load(env={}).memory_target == "96MB"
    assert Settings.load(env={"OTEL_FEEDBACK_MEMORY_TARGET": "1GB"}).memory_target == "1GB"
    with pytest.raises(ConfigError, match="OTEL_FEEDBACK_MEMORY_TARGET must be a size"):
        Settings.load(env={"OTEL_FEEDBACK_MEMORY_TARGET": "-1"})


def test_governor_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="keep_bytes"):
        MemoryGovernor("128MB", "512MB", -1, duckdb.connect)
    with pytest.raises(ValueError, match="interval_s"):
        MemoryGovernor("128MB", "512MB", 0, duckdb.connect, interval_s=0)


def test_the_served_query_path_sees_the_whole_limit(tmp_path: Path) -> None:
    from tests.conftest import make_server

    srv = make_server(tmp_path / "served.duckdb", memory_limit="256MB", memory_target="256MB")
    try:
        assert srv.store is not None and srv.store.memory is not None
        import httpx

        r = httpx.post(f"{srv.http_url}/v1/query", json={"sql": "SELECT current_setting('memory_limit') AS m"})
        assert r.status_code == 200, r.text
        assert r.json()["rows"][0][0] == shown("256MB")
    finally:
        srv.stop()


BIG = "SELECT len(list(x)) AS n FROM range(10_000_000) t(x)"
"""A query whose memory cannot spill: one 80 MB list (fails within 64MB, runs within 512MB)."""


def test_a_query_out_of_memory_within_the_target_runs_again_within_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lowered_on: list[str] = []
    real_set = MemoryGovernor._set

    def recording_set(self: MemoryGovernor, size: str) -> None:
        if size == self.target:
            lowered_on.append(threading.current_thread().name)
        real_set(self, size)

    monkeypatch.setattr(MemoryGovernor, "_set", recording_set)
    with open_store(tmp_path / "esc.duckdb", "16MB", target="32MB") as s:
        assert s.memory is not None and s.memory.can_escalate
        assert setting(s, "memory_limit") == shown("32MB")
        assert s.query(BIG).rows == [(10_000_000,)]
        assert s.memory.escalations == 1
        assert s.arrow(BIG).to_pylist() == [{"n": 10_000_000}]  # remembered: within the limit at once
        assert s.memory.escalations == 2 and s.memory.reruns == 1
        assert s.query(BIG).rows == [(10_000_000,)]
        assert s.memory.escalations == 3 and s.memory.reruns == 1
        assert s.query("SELECT 1").rows == [(1,)]
        assert s.memory.escalations == 3  # only what ran out escalates
        # back to the target, lowered by the writer thread (lowering beside a commit could starve it)
        wait_for(lambda: setting(s, "memory_limit") == shown("32MB"), "the limit back to the target")
    assert lowered_on and set(lowered_on) == {"otel-feedback-writer"}, lowered_on


def test_a_query_out_of_memory_even_within_the_limit_names_the_setting(tmp_path: Path) -> None:
    with Store(tmp_path / "oom.duckdb", memory_limit="40MB", memory_target="20MB", idle_cache="0MB") as s:
        with pytest.raises(QueryOutOfMemory, match="OTEL_FEEDBACK_MEMORY_LIMIT"):
            s.query(BIG)
        assert s.memory is not None and s.memory.escalations == 1
        wait_for(lambda: setting(s, "memory_limit") == shown("20MB"), "the limit back to the target")


def test_without_room_above_the_target_nothing_is_run_twice(tmp_path: Path) -> None:
    with Store(tmp_path / "flat.duckdb", memory_limit="40MB", memory_target="40MB", idle_cache="0MB") as s:
        assert s.memory is not None and not s.memory.can_escalate
        with pytest.raises(QueryOutOfMemory):
            s.query(BIG)
        assert s.memory.escalations == 0


def test_an_append_out_of_memory_within_the_target_is_applied_within_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    with open_store(path, "0MB", target="64MB") as s:
        assert s.memory is not None
        s.memory.target = "2MB"  # far below one append (a file cannot be opened within so little)
        s.call(lambda con: con.execute("SET memory_limit = '2MB'"))
        ingest(s, 2, rows=5_000)
        s.flush()
        assert s.memory.write_escalations >= 1 and s.memory.escalations == 0
        assert s.query("SELECT count(*) FROM span_log").rows == [(10_000,)]
        wait_for(lambda: setting(s, "memory_limit") == shown("2MB"), "the limit back to the target")
        # the rows are past the 4MB checkpoint threshold: the checkpoint ran within the limit too (at 2MB it
        # failed, and DuckDB invalidated the database)
        assert s.writer is not None and s.writer.stats.checkpoints >= 1
    assert not list(Path(f"{path}.journal").glob("rejected-*")), "rows set aside instead of applied"


def test_a_target_too_small_to_open_the_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="memory target 100KB is too small"):
        Store(tmp_path / "tiny.duckdb", memory_limit="512MB", memory_target="100KB", idle_cache="0MB")
    with pytest.raises(ConfigError, match="OTEL_FEEDBACK_MEMORY_TARGET must be at least 16MB"):
        Settings.load(env={"OTEL_FEEDBACK_MEMORY_TARGET": "8MB"})


def test_the_served_query_endpoint_runs_a_big_query_again_within_the_limit(tmp_path: Path) -> None:
    from tests.conftest import make_server

    srv = make_server(tmp_path / "served-big.duckdb", memory_limit="512MB", memory_target="32MB")
    try:
        import httpx

        for fmt in ("json", "arrow"):
            r = httpx.post(f"{srv.http_url}/v1/query", json={"sql": BIG, "format": fmt}, timeout=WAIT_S)
            assert r.status_code == 200, r.text
        assert srv.store is not None and srv.store.memory is not None
        assert srv.store.memory.escalations == 2

        def limit() -> Any:
            r = httpx.post(f"{srv.http_url}/v1/query", json={"sql": "SELECT current_setting('memory_limit')"})
            return r.json()["rows"]

        wait_for(lambda: limit() == [[shown("32MB")]], "the limit back to the target")
    finally:
        srv.stop()


def test_an_append_beside_queries_that_hold_memory_gets_the_limit_or_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What DuckDB holds is read from duckdb_memory(); here it is set, to drive each branch on a real database."""
    from otel_feedback.store import memory as mem

    con = duckdb.connect(str(tmp_path / "room.duckdb"))
    try:
        gov = MemoryGovernor("64MB", "512MB", 0, con.cursor)
        con.execute("SET memory_limit = '64MB'")
        held = {"bytes": 0}
        monkeypatch.setattr(MemoryGovernor, "_held", staticmethod(lambda c: held["bytes"]))
        monkeypatch.setattr(mem, "WRITE_PATIENCE_S", 0.05)  # the query never ends here: its wait runs out at once

        def limit_inside(size: int) -> str:
            with gov.room_to_write(con, size):
                return str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])

        held["bytes"] = 60 * MB
        assert limit_inside(1) == shown("64MB")  # no query runs: only the writer and evictable cache
        with gov.reading():
            held["bytes"] = 10 * MB
            assert limit_inside(1) == shown("64MB")  # room enough within the target
            assert limit_inside(30 * MB) == shown("512MB")  # three times the append does not fit: the limit
            assert gov.write_escalations == 1
            held["bytes"] = 500 * MB  # not even the limit has room: it waits for the queries, then goes on
            monkeypatch.setattr(mem, "WRITE_WAIT_S", 0.3)
            started = time.monotonic()
            with caplog.at_level("WARNING", logger="otel_feedback"):
                assert limit_inside(1) == shown("512MB")
            assert time.monotonic() - started >= 0.3
            assert "appending regardless" in caplog.text
        assert str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]) == shown("64MB")
    finally:
        con.close()


def test_stores_sharing_a_file_in_one_process_share_its_governor(tmp_path: Path) -> None:
    """One DuckDB instance, one memory limit: a second read-write Store and a read-only one of the file use the
    governor of the first (their queries keep trims off too); only the first one's writer maintains it."""
    path = tmp_path / "shared.duckdb"
    with open_store(path, "0MB") as first:
        second = Store(path, memory_limit="256MB", memory_target="64MB", idle_cache="0MB")
        reader = Store(path, read_only=True)
        try:
            assert first.memory is not None
            assert second.memory is first.memory and reader.memory is first.memory
            assert second.writer is not None and second.writer._memory is None
            with reader.reading():
                assert first.memory.readers == 1
            assert setting(first, "memory_limit") == shown("512MB")  # the second Store's settings did not apply
        finally:
            reader.close()
            second.close()


def test_maintain_does_only_what_is_due(tmp_path: Path) -> None:
    """Lowering a raised limit is due at once; a trim only once ``interval_s`` has passed since the last one."""
    con = duckdb.connect(str(tmp_path / "due.duckdb"))
    try:
        gov = MemoryGovernor("64MB", "512MB", 0, con.cursor, interval_s=60.0, grace_s=0.0)
        con.execute("SET memory_limit = '64MB'")
        gov.wrote()
        assert gov.due_in() == 0.0
        gov.maintain(con)
        assert gov.trims == 1
        gov.wrote()
        assert gov.due_in() is not None and gov.due_in() > 50  # the next trim waits for its interval
        with gov.escalated():  # a query's: the limit stays raised until the writer lowers it
            assert str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]) == shown("512MB")
        assert gov.due_in() == 0.0  # lowering is due now
        gov.maintain(con)
        assert gov.trims == 1, "trimmed before its interval"
        assert str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]) == shown("64MB")
        assert gov.due_in() is not None and gov.due_in() > 50
    finally:
        con.close()


def test_a_checkpoint_short_of_memory_runs_within_the_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """DuckDB invalidates the whole database when a checkpoint runs out of memory ("failed to pin block"): the
    writer's checkpoints get the limit when the current one leaves too little room (here at close, 2MB)."""
    path = tmp_path / "c.duckdb"
    with open_store(path, "0MB", checkpoint_threshold="1GB", target="64MB") as s:
        assert s.memory is not None
        ingest(s, 2, rows=5_000)
        assert s.flush()
        s.memory.target = "2MB"
        s.call(lambda con: con.execute("SET memory_limit = '2MB'"))
        escalations = s.memory.write_escalations
    assert "checkpoint at close failed" not in caplog.text
    assert s.memory.write_escalations > escalations
    with Store(path) as again:
        assert again.query("SELECT count(*) FROM span_log").rows == [(10_000,)]
    assert "not in the database yet" not in caplog.text


def test_duckdb_has_its_query_threads_while_queries_run(tmp_path: Path) -> None:
    with open_store(tmp_path / "t.duckdb", "16MB") as s:
        assert s.memory is not None
        s.memory.use_threads(3)
        assert setting(s, "threads") == "2"  # the writer alone
        with s.reading():
            assert setting(s, "threads") == "3"
            with s.reading():  # a second query; the first ends before it
                pass
            assert setting(s, "threads") == "3"
            ingest(s, 1)  # the writer works meanwhile, and keeps the query threads
            assert setting(s, "threads") == "3"
        # once no query has run for grace_s, the writer thread sets them back
        wait_for(lambda: setting(s, "threads") == "2", "the writer's threads again")
        s.memory.use_threads(1)
        with s.reading():
            assert setting(s, "threads") == "1"
        assert setting(s, "threads") == "1"
        with pytest.raises(ValueError, match="queries must be >= 1"):
            s.memory.use_threads(0)


def long_ids(n: int, prefix: str) -> pa.Table:
    """``n`` span rows whose trace ids are ~1 KB of incompressible text: a search of ``span_log``'s ids reads
    ~0.5 KB a span (compressed), as a search of millions of real ids reads tens of MB."""
    table = span_table(n, prefix)
    ids = [prefix + os.urandom(500).hex() for _ in range(n)]
    return table.set_column(table.schema.get_field_index("trace_id"), "trace_id", pa.array(ids, pa.string()))


def cached(con: duckdb.DuckDBPyConnection) -> int:
    sql = "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'BASE_TABLE'"
    return int(con.execute(sql).fetchall()[0][0])


def governed(path: Path, rows: int) -> tuple[duckdb.DuckDBPyConnection, MemoryGovernor]:
    """A file of ``rows`` rows of ~1 KB of hex (~0.5 KB compressed), none of it cached; its governor (target
    256MB, limit 1GB, keep nothing, no periodic trims)."""
    con = duckdb.connect(str(path))
    con.execute("SET memory_limit = '256MB'")
    con.execute(
        f"CREATE TABLE t AS SELECT i, concat_ws('', {', '.join(f'md5((i * 31 + {k})::VARCHAR)' for k in range(30))}) AS v FROM range({rows}) r(i)"
    )
    con.execute("CHECKPOINT")
    gov = MemoryGovernor("256MB", "1GB", 0, con.cursor, interval_s=3600.0, grace_s=0.0)
    gov.trim(con)
    assert cached(con) <= MARGIN_BYTES
    return con, gov


def test_a_sparing_read_leaves_the_cache_as_it_found_it(tmp_path: Path) -> None:
    """The same scan through :meth:`MemoryGovernor.sparing` and without: DuckDB keeps what the plain one read (up
    to its target), and at most the sparing one's room of what the sparing one read."""
    con, gov = governed(tmp_path / "spare.duckdb", 150_000)
    try:
        scan = "SELECT count(*) FROM t WHERE v > 'a'"
        count = con.execute(scan).fetchall()
        plain = cached(con)
        gov.trim(con)
        assert gov.sparing(con, lambda: con.execute(scan).fetchall()) == count and count[0][0] > 20_000
        spared = cached(con)
        assert plain > 2 * (SPARING_ROOM_BYTES + MARGIN_BYTES), plain
        assert spared <= SPARING_ROOM_BYTES + MARGIN_BYTES, spared
        assert (gov.spared_reads, gov.spared_reruns) == (1, 0)
        assert str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]) == shown("256MB")
    finally:
        con.close()


def test_a_query_during_a_sparing_read_gets_the_target_and_a_read_short_of_memory_runs_again(tmp_path: Path) -> None:
    con, gov = governed(tmp_path / "race.duckdb", 1_000)
    other = con.cursor()
    try:

        def limit(c: duckdb.DuckDBPyConnection) -> str:
            return str(c.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])

        def work() -> list[str]:
            inside = limit(con)
            with gov.reading():  # a query, on another cursor of the instance
                query = limit(other)
            return [inside, query, limit(con)]

        inside, query, after = gov.sparing(con, work)
        assert parse_size(inside.replace(" ", "").replace("iB", "B")) < 64 * MB, inside
        assert query == after == shown("256MB")
        # a read that needs more than the lowered limit (an 80 MB list) runs again within the target
        assert gov.sparing(con, lambda: con.execute(BIG).fetchall()) == [(10_000_000,)]
        assert (gov.spared_reads, gov.spared_reruns) == (2, 1)
        assert limit(con) == shown("256MB")
        with gov.reading():  # no lowering under a running query
            assert gov.sparing(con, lambda: limit(con)) == shown("256MB")
        assert gov.spared_reads == 2
    finally:
        other.close()
        con.close()


def test_the_search_for_copies_of_spans_is_a_sparing_read(tmp_path: Path) -> None:
    """A batch repeating spans already stored (a client's retry): its search of ``span_log`` leaves DuckDB's
    cache as small as it was, and the copies are found."""
    with open_store(tmp_path / "copies.duckdb", "0MB") as s:
        assert s.memory is not None
        first = long_ids(60_000, "a")
        s.append({"span_log": first}, timeout=WAIT_S)
        s.call(lambda con: con.execute("CHECKPOINT"))
        s.memory.grace_s = s.memory.interval_s = 0.01
        trims = s.memory.trims
        s.query("SELECT 1")  # a query's end makes a trim due
        wait_for(lambda: s.memory.trims > trims, "a trim")
        assert memory(s, "BASE_TABLE") <= MARGIN_BYTES
        s.memory.interval_s = 3600.0  # what the search leaves cached is not trimmed away before it is measured
        s.append({"span_log": first.slice(0, 10)}, timeout=WAIT_S)
        s.flush()
        assert s.memory.spared_reads == 1 and s.memory.spared_reruns == 0
        assert memory(s, "BASE_TABLE") <= SPARING_ROOM_BYTES + MARGIN_BYTES
        assert s.query("SELECT count(*), count(DISTINCT span_id) FROM span_copies").rows == [(20, 10)]


def test_an_append_short_of_room_beside_queries_waits_for_them_once_per_run_of_queries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rather than take the limit (which lets the queries' cache grow past the target too), an append or a
    checkpoint short of room waits for the running queries to end; once a wait in a run of queries ran out, the
    rest of that run gets the limit at once (a long query must not slow every append by the wait)."""
    from otel_feedback.store import memory as mem

    con = duckdb.connect(str(tmp_path / "patience.duckdb"))
    try:
        gov = MemoryGovernor("64MB", "512MB", 0, con.cursor)
        con.execute("SET memory_limit = '64MB'")
        # what DuckDB holds besides its cache (set here to drive each branch): the queries' 30 MB and the writer's 10
        monkeypatch.setattr(MemoryGovernor, "_held", staticmethod(lambda c: (40 if gov.readers else 10) * MB))

        def limit_inside(room: Callable[[], Any]) -> tuple[str, float]:
            started = time.monotonic()
            with room():
                return str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]), (
                    time.monotonic() - started
                )

        def append() -> Any:
            return gov.room_to_write(con, 10 * MB)  # 3 x 10 MB does not fit beside 40 MB within 64MB

        def checkpoint() -> Any:
            return gov.room_to_checkpoint(con)

        def query_for(seconds: float) -> threading.Event:
            started = threading.Event()

            def run() -> None:
                with gov.reading():
                    started.set()
                    time.sleep(seconds)

            threading.Thread(target=run, daemon=True).start()
            assert started.wait(WAIT_S)
            return started

        monkeypatch.setattr(mem, "WRITE_PATIENCE_S", 10.0)
        for room in (append, checkpoint):  # the query ends during the wait: within the target
            query_for(1.0)
            limit, waited = limit_inside(room)
            assert limit == shown("64MB") and waited < 5, (room, waited)
        assert (gov.write_waits, gov.write_escalations) == (2, 0)

        monkeypatch.setattr(mem, "WRITE_PATIENCE_S", 1.0)
        with gov.reading():  # a query that outlasts the wait: the limit, at once for the rest of its run
            limit, waited = limit_inside(append)
            assert limit == shown("512MB") and waited >= 1.0
            for room in (append, checkpoint):
                limit, waited = limit_inside(room)
                assert limit == shown("512MB") and waited < 0.5
            assert (gov.write_waits, gov.write_escalations) == (3, 3)
        with gov.reading():  # the next run of queries is waited for again
            assert limit_inside(append)[1] >= 1.0
        assert gov.write_waits == 4
    finally:
        con.close()


def test_queries_wait_for_the_writer_before_they_count_as_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query waits until DuckDB has what was acknowledged before it, and only then counts as running: counted while
    it waited, it would keep the append it waits for waiting for it (an append short of room beside running
    queries waits for them to end)."""
    from otel_feedback.client import Source

    with open_store(tmp_path / "order.duckdb", "16MB") as s:
        assert s.memory is not None
        gov = s.memory
        ingest(s, 1, rows=100)
        real = Store._wait_applied
        readers_then: list[int] = []

        def wait_applied(self: Store) -> None:
            readers_then.append(gov.readers)
            real(self)

        monkeypatch.setattr(Store, "_wait_applied", wait_applied)
        assert s.query("SELECT count(*) FROM span_log").rows == [(100,)]
        assert s.arrow("SELECT count(*) AS n FROM span_log").to_pylist() == [{"n": 100}]
        _, _, chunks = s.stream("SELECT span_id FROM span_log")
        assert sum(len(c) for c in chunks) == 100
        reader, _ = s.batches("SELECT span_id FROM span_log")
        assert reader.read_all().num_rows == 100
        assert Source(store=s).arrow("SELECT span_id FROM span_log").num_rows == 100
        assert readers_then and set(readers_then) == {0}, readers_then


def test_no_sparing_read_lowers_the_limit_under_a_second_writer_of_the_file(tmp_path: Path) -> None:
    """A second read-write Store of the file in the process appends without asking the governor for room: a limit
    lowered under its commit could leave that commit short (fatal to DuckDB), so sparing reads run as they are
    and the cache is not trimmed (it stays within the target) while it is open."""
    path = tmp_path / "two.duckdb"
    with open_store(path, "0MB") as first:
        assert first.memory is not None
        gov = first.memory

        def spared_read() -> int:
            before = gov.spared_reads
            first.call(lambda con: gov.sparing(con, lambda: con.execute("SELECT 1").fetchall()))
            return gov.spared_reads - before

        second = Store(path, memory_limit="256MB", memory_target="64MB", idle_cache="0MB")
        try:
            assert gov.other_writers == 1
            assert spared_read() == 0
            trims = gov.trims
            first.call(lambda con: gov.trim(con))  # nor does a trim
            assert gov.trims == trims
        finally:
            second.close()
        assert gov.other_writers == 0
        reader = Store(path, read_only=True)  # a reader appends nothing
        try:
            assert spared_read() == 1
        finally:
            reader.close()
