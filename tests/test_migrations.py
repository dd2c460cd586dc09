"""A file written before migrations 0002 and 0003 opens with the derived span columns filled in from its
attributes, and its views answer exactly as for data written today."""

from __future__ import annotations

from pathlib import Path

import duckdb

from otel_feedback.store import Store
from otel_feedback.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate

ATTRS = {
    "a1": '{"gen_ai.request.model": "gpt-4o-mini", "input.value": "q"}',
    "a2": '{"llm.model_name": "claude-haiku-4", "user_feedback": "negative", "user_feedback_rating": 2}',
    "a3": '{"session.id": "s1", "session.annotations.0.annotation.name": "csat"}',
    "a4": "{}",
    "a5": '{"annotation_status": "empty", "input.value": "q5"}',
}


def test_a_version_1_file_gets_its_derived_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    try:
        assert migrate(con, str(path), "0.0.9", MIGRATIONS[:1]) == ["0001_initial"]
        for i, (span, attrs) in enumerate(ATTRS.items()):
            con.execute(
                "INSERT INTO span_log (trace_id, span_id, name, kind, start_time, end_time, duration_ms, status_code,"
                " attributes, resource_attributes, received_at) VALUES (?, ?, ?, 'INTERNAL', "
                "TIMESTAMP_NS '2026-11-01 10:00:00' + INTERVAL (?) SECOND, TIMESTAMP_NS '2026-11-01 10:00:01', 1.0, "
                "'UNSET', ?, '{}', TIMESTAMP_NS '2026-11-01 10:00:02')",
                [f"{i:032x}", f"{span:0>16}", span, i, attrs],
            )
    finally:
        con.close()
    with Store(path) as store:
        assert store.query("SELECT max(version) FROM _migrations").rows == [(SCHEMA_VERSION,)]
        rows = store.query(
            "SELECT s.name, s.model, l.feedback_attributes IS NOT NULL, s.annotation_carrier, s.user_feedback, "
            "s.user_feedback_rating FROM spans s JOIN span_log l USING (trace_id, span_id) ORDER BY s.name"
        ).rows
        assert rows == [
            ("a1", "gpt-4o-mini", False, False, None, None),
            ("a2", "claude-haiku-4", True, False, "negative", 2.0),
            ("a3", None, False, True, None, None),
            ("a4", None, False, False, None, None),
            ("a5", None, True, False, None, None),
        ]
        assert store.query("SELECT root_name, input FROM traces ORDER BY root_name").rows == [
            ("a1", "q"),
            ("a2", None),
            ("a4", None),
            ("a5", "q5"),
        ]
        # the carrier's trace is feedback, not an answer: four traces remain, one of them negative
        assert store.query("SELECT traces, negative FROM feedback_summary").rows == [(4, 1)]
        # 0004: the tables were rebuilt with zstd on the long text, every row kept in order
        ddl = store.query("SELECT sql FROM duckdb_tables() WHERE table_name = 'span_log'").rows[0][0]
        assert (
            "attributes JSON USING COMPRESSION ZSTD NOT NULL" in ddl and '"input" VARCHAR USING COMPRESSION ZSTD' in ddl
        )
        assert [r[0] for r in store.query("SELECT name FROM span_log ORDER BY rowid").rows] == list(ATTRS)
        # 0003: a span's own annotation_status puts it in the review queue
        assert store.query("SELECT name, input, user_feedback FROM review_queue").rows == [("a5", "q5", None)]


def _span(con: duckdb.DuckDBPyConnection, trace: str, span: str, parent: str | None, **cols: object) -> None:
    names = ["trace_id", "span_id", "parent_span_id", *cols]
    con.execute(
        f"INSERT INTO span_log ({', '.join(names)}, name, kind, start_time, end_time, duration_ms, status_code, "
        "attributes, resource_attributes, received_at) VALUES "
        f"({', '.join('?' * len(names))}, 'n', 'INTERNAL', TIMESTAMP_NS '2026-11-01 10:00:00', "
        "TIMESTAMP_NS '2026-11-01 10:00:01', 1.0, 'UNSET', '{}', '{}', TIMESTAMP_NS '2026-11-01 10:00:02')",
        [trace, span, parent, *cols.values()],
    )


NS_AFTER_RECEIVED = "epoch_ns(received_at) - epoch_ns(TIMESTAMP_NS '2026-11-01 10:00:02')"
"""How many ns after the received_at that _span gives a row's received_at is."""


def _record(con: duckdb.DuckDBPyConnection, seq: int, fid: str, trace: str | None, span: str | None,
            key: str | None = None, value: str | None = None) -> None:  # fmt: skip
    con.execute(
        "INSERT INTO feedback_log (seq, feedback_id, trace_id, span_id, target_key, target_value, attributes, "
        'feedback_time, received_at, channel) VALUES (?, ?, ?, ?, ?, ?, \'{"user_feedback": "positive"}\', '
        "TIMESTAMP_NS '2026-11-01 11:00:00', TIMESTAMP_NS '2026-11-01 11:00:00', 'test')",
        [seq, fid, trace, span, key, value],
    )


def test_a_version_5_file_gets_the_targets_its_feedback_names(tmp_path: Path) -> None:
    """0006 resolves, from the rows a file holds, every way a record can name spans other than by trace and span
    id; the writer then keeps them as rows arrive (a root arriving after the record that names its trace)."""
    path = tmp_path / "v5.duckdb"
    con = duckdb.connect(str(path))
    try:
        migrate(con, str(path), "0.0.9", MIGRATIONS[:5])
        _span(con, "t1", "r1", None, session_id="s")
        _span(con, "t1", "c1", "r1")
        _span(con, "t2", "r2", None)
        _span(con, "t2", "c2", "r2", session_id="s")  # the session is carried by a child: t2's root is named
        _span(con, "t3", "r3", None, session_id="s", annotation_carrier=True)  # a carrier: not a trace of s
        _span(con, "t4", "r4", None, client_request_id="req-4")
        _span(con, "t4", "r4", None, client_request_id="req-4")  # a retry stored the root twice
        _record(con, 1, "trace-t1", "t1", None)
        _record(con, 2, "session-s", None, None, "session.id", "s")
        _record(con, 3, "request-4", None, None, "client_request_id", "req-4")
        _record(con, 4, "span-c1", None, "c1")
        _record(con, 5, "direct-r2", "t2", "r2")
        _record(con, 6, "trace-t1", "t2", None)  # a retry of record 1 that names another trace: the first counts
        _record(con, 7, "trace-t9", "t9", None)  # no span of t9 yet
    finally:
        con.close()
    expected = {
        ("trace-t1", "t1", "r1"),
        ("session-s", "t1", "r1"),
        ("session-s", "t2", "r2"),
        ("request-4", "t4", "r4"),
        ("span-c1", "t1", "c1"),
        ("direct-r2", "t2", "r2"),
    }
    targets = "SELECT feedback_id, trace_id, span_id FROM feedback_targets"
    with Store(path) as store:
        assert store.query("SELECT max(version) FROM _migrations").rows == [(SCHEMA_VERSION,)]
        rows = store.query(targets).rows
        assert sorted(rows) == sorted(expected)  # each once
        assert store.query("SELECT feedback_id FROM orphan_feedback").rows == [("trace-t9",)]
    with Store(path) as store:
        # t9's root and a new trace of the session arrive: the records stored before name them now
        con = store.cursor()
        try:
            new = con.sql(
                "SELECT * REPLACE ('t9' AS trace_id, 'r9' AS span_id, NULL::VARCHAR AS session_id) "
                "FROM span_log WHERE span_id = 'r1' UNION ALL "
                "SELECT * REPLACE ('t5' AS trace_id, 'r5' AS span_id, NULL::VARCHAR AS parent_span_id) "
                "FROM span_log WHERE span_id = 'c2'"
            ).to_arrow_table()
        finally:
            con.close()
        store.append({"span_log": new})
        rows = store.query(targets).rows
        assert sorted(rows) == sorted(expected | {("trace-t9", "t9", "r9"), ("session-s", "t5", "r5")})
        assert store.query("SELECT feedback_id FROM orphan_feedback").rows == []


def test_a_version_6_file_gets_the_copies_of_what_it_holds_twice(tmp_path: Path) -> None:
    """0007 writes down every copy of each span and record stored more than once, moving copies of a span with
    the same received_at 1 ns apart in the order stored; the views then show the same first copies."""
    path = tmp_path / "v6.duckdb"
    con = duckdb.connect(str(path))
    try:
        migrate(con, str(path), "0.0.9", MIGRATIONS[:6])
        _span(con, "t1", "r1", None, service_name="first")
        _span(con, "t1", "r1", None, service_name="second")  # the same request carried it twice: same received_at
        _span(con, "t1", "c1", "r1")
        _span(con, "t2", "r2", None, service_name="early")
        con.execute(
            "INSERT INTO span_log SELECT * REPLACE ('later' AS service_name, received_at + INTERVAL 1 SECOND AS received_at) "
            "FROM span_log WHERE span_id = 'r2'"
        )
        _record(con, 1, "once", "t1", "r1")
        _record(con, 2, "twice", "t1", "c1")
        _record(con, 3, "twice", "t2", "r2")  # a retry naming another span: the first counts
    finally:
        con.close()
    with Store(path) as store:
        assert store.query("SELECT max(version) FROM _migrations").rows == [(SCHEMA_VERSION,)]
        copies = store.query(f"SELECT trace_id, span_id, {NS_AFTER_RECEIVED} FROM span_copies ORDER BY ALL").rows
        assert copies == [("t1", "r1", 0), ("t1", "r1", 1), ("t2", "r2", 0), ("t2", "r2", 1_000_000_000)]
        assert store.query("SELECT service_name FROM span_log WHERE span_id = 'r1' ORDER BY received_at").rows == [
            ("first",),
            ("second",),
        ]
        assert store.query("SELECT span_id, service_name FROM spans WHERE parent_span_id IS NULL ORDER BY 1").rows == [
            ("r1", "first"),
            ("r2", "early"),
        ]
        assert store.query("SELECT feedback_id, seq FROM feedback_copies ORDER BY seq").rows == [
            ("twice", 2),
            ("twice", 3),
        ]
        assert store.query("SELECT feedback_id, span_id FROM feedback_targets ORDER BY 1").rows == [
            ("once", "r1"),
            ("twice", "c1"),
        ]
        # a third copy of r1 arrives: written down beside the other two, and the first still counts
        con = store.cursor()
        try:
            again = con.sql(
                "SELECT * REPLACE ('third' AS service_name) FROM span_log WHERE service_name = 'first'"
            ).to_arrow_table()
        finally:
            con.close()
        store.append({"span_log": again})
        assert store.query("SELECT count(*) FROM span_copies WHERE span_id = 'r1'").rows == [(3,)]
        assert store.query("SELECT service_name FROM spans WHERE span_id = 'r1'").rows == [("first",)]
        # the same received_at as the first copy: moved on past both earlier copies
        assert store.query(f"SELECT {NS_AFTER_RECEIVED} FROM span_log WHERE service_name = 'third'").rows == [(2,)]
