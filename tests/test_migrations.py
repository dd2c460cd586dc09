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
