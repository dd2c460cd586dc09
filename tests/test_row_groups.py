"""Checkpoints write new rows and leave the row groups already in the file alone (no row-group merges).

DuckDB's checkpoint merges adjacent row groups that hold fewer rows than they could ("vacuum"), re-reading and
compressing them again: with LLM-app spans appended a few thousand at a time and checkpointed every ~16 k rows,
one checkpoint in 2-5 rewrote 1-4 earlier groups (250-600 ms, 40-130 MB more memory while it ran). A file held
read-write runs with ``max_vacuum_tasks = 0`` (``store.NO_VACUUM``); this test fails with DuckDB's default (100).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pyarrow as pa

from otel_feedback.decode import decode_traces_bytes
from otel_feedback.store import NO_VACUUM, Store

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _spans(rows: int) -> pa.Table:
    """``rows`` spans of the benchmark's LLM-app shape (root, retrieval, LLM and tool spans, 1-2 KB of text)."""
    sys.path.insert(0, str(BENCH))
    try:
        import run
    finally:
        sys.path.pop(0)
    rng = random.Random(1)
    work = run.Workload(1, time.time_ns())
    slots = [run.TraceIdSlots(run.encode_request(work.traces(80), i, rng), 80, i) for i in range(4)]
    tables, got, i = [], 0, 0
    while got < rows:
        decoded = decode_traces_bytes(slots[i % 4].fresh(random.Random(i).randbytes(16 * 80)))
        assert decoded is not None
        tables.append(decoded.table)
        got += decoded.table.num_rows
        i += 1
    return pa.concat_tables(tables).slice(0, rows).combine_chunks()


def _blocks(store: Store) -> dict[int, tuple[int, ...]]:
    """The file blocks of each row group of ``span_log`` written so far."""
    rows = store.call(
        lambda con: con.execute(
            "SELECT row_group_id, list(DISTINCT block_id ORDER BY block_id) FROM pragma_storage_info('span_log') "
            "WHERE persistent GROUP BY ALL"
        ).fetchall()
    )
    return {group: tuple(blocks) for group, blocks in rows}


def test_checkpoints_never_rewrite_row_groups_already_written(tmp_path: Path) -> None:
    assert NO_VACUUM == 0
    checkpoints = 6
    spans = _spans(checkpoints * 25_000)
    with Store(tmp_path / "rg.duckdb", checkpoint_threshold="1GB") as store:  # the test checkpoints by hand
        assert store.call(lambda con: con.execute("SELECT current_setting('max_vacuum_tasks')").fetchall()) == [(0,)]
        written: dict[int, tuple[int, ...]] = {}
        rewritten: list[int] = []
        at = 0
        sizes = random.Random(2)
        for _ in range(checkpoints):
            since = 0
            while since < 16_000:  # applies of any size, a checkpoint after ~16 k rows: as the server's writer does
                n = sizes.randrange(2_000, 9_000)
                store.append({"span_log": spans.slice(at, n)})
                at += n
                since += n
            store.call(lambda con: con.execute("CHECKPOINT"))
            now = _blocks(store)
            rewritten += [group for group, blocks in written.items() if now.get(group) != blocks]
            written = now
        assert rewritten == []
        assert store.call(lambda con: con.execute("SELECT count(*) FROM span_log").fetchall()) == [(at,)]
