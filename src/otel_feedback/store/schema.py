"""Table DDL as ordered, named migrations, recorded in ``_migrations`` and applied at open.

A migration is never edited once released: add a new one. ``SCHEMA_VERSION`` is the number of
migrations this version knows; a file recording more is refused (it was written by a newer version).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from ..errors import SchemaError


@dataclass(frozen=True)
class Migration:
    """One schema change: SQL statements run in a single transaction."""

    name: str
    sql: str


TRACE_KEY = "CASE WHEN length({id}) = 32 AND {id} = lower({id}) THEN TRY_CAST('0x' || {id} AS UHUGEINT) END"
"""SQL of a trace id's key in ``trace_roots`` (``{id}``: a VARCHAR expression): its 128 bits, for an id of 32
lower-case hex digits (every id OTLP and this package write), else NULL (the id is then kept as text)."""

ROOT_COLUMNS = (
    TRACE_KEY.format(id="trace_id")
    + " AS trace_key, CASE WHEN trace_key IS NULL THEN trace_id END AS trace_id, span_id"
)
"""The SELECT list of ``trace_roots``' columns from rows with ``trace_id`` and ``span_id``."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_initial",
        """
        CREATE TABLE span_log (
            trace_id VARCHAR NOT NULL,
            span_id VARCHAR NOT NULL,
            parent_span_id VARCHAR,
            trace_state VARCHAR,
            flags BIGINT,
            name VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            start_time TIMESTAMP_NS NOT NULL,
            end_time TIMESTAMP_NS NOT NULL,
            duration_ms DOUBLE NOT NULL,
            status_code VARCHAR NOT NULL,
            status_message VARCHAR,
            service_name VARCHAR,
            scope_name VARCHAR,
            scope_version VARCHAR,
            session_id VARCHAR,
            client_request_id VARCHAR,
            attributes JSON NOT NULL,
            resource_attributes JSON NOT NULL,
            scope_attributes JSON,
            events JSON,
            links JSON,
            dropped_attributes_count BIGINT NOT NULL DEFAULT 0,
            dropped_events_count BIGINT NOT NULL DEFAULT 0,
            dropped_links_count BIGINT NOT NULL DEFAULT 0,
            received_at TIMESTAMP_NS NOT NULL
        );
        CREATE TABLE log_records (
            time TIMESTAMP_NS,
            observed_time TIMESTAMP_NS,
            trace_id VARCHAR,
            span_id VARCHAR,
            flags BIGINT,
            severity_number BIGINT,
            severity_text VARCHAR,
            event_name VARCHAR,
            body JSON,
            attributes JSON NOT NULL,
            resource_attributes JSON NOT NULL,
            service_name VARCHAR,
            scope_name VARCHAR,
            scope_version VARCHAR,
            dropped_attributes_count BIGINT NOT NULL DEFAULT 0,
            received_at TIMESTAMP_NS NOT NULL
        );
        CREATE TABLE feedback_log (
            seq BIGINT NOT NULL,
            feedback_id VARCHAR NOT NULL,
            trace_id VARCHAR,
            span_id VARCHAR,
            target_key VARCHAR,
            target_value VARCHAR,
            attributes JSON NOT NULL,
            name VARCHAR,
            label VARCHAR,
            score DOUBLE,
            explanation VARCHAR,
            expected JSON,
            error VARCHAR,
            metadata JSON,
            annotator_kind VARCHAR,
            source_id VARCHAR,
            feedback_time TIMESTAMP_NS NOT NULL,
            received_at TIMESTAMP_NS NOT NULL,
            channel VARCHAR NOT NULL
        );
        CREATE TABLE feedback_config (
            name VARCHAR NOT NULL,
            type VARCHAR NOT NULL,
            labels VARCHAR[],
            min_value DOUBLE,
            max_value DOUBLE,
            description VARCHAR,
            declared_at TIMESTAMP_NS NOT NULL
        );
        """,
    ),
    Migration(
        "0002_derived_span_columns",
        """
        ALTER TABLE span_log ADD COLUMN model VARCHAR;
        ALTER TABLE span_log ADD COLUMN feedback_attributes JSON;
        ALTER TABLE span_log ADD COLUMN annotation_carrier BOOLEAN;
        ALTER TABLE span_log ADD COLUMN input VARCHAR;
        ALTER TABLE span_log ADD COLUMN output VARCHAR;
        UPDATE span_log SET
            model = coalesce(attributes->>'gen_ai.request.model', attributes->>'llm.model_name',
                             attributes->>'gen_ai.response.model'),
            feedback_attributes = CASE
                WHEN json_exists(attributes, '$."user_feedback"') OR json_exists(attributes, '$."user_feedback_rating"')
                  OR json_exists(attributes, '$."user_feedback_category"')
                  OR json_exists(attributes, '$."user_feedback_comment"')
                  OR json_exists(attributes, '$."user_feedback_timestamp"')
                THEN json_object('user_feedback', attributes->'user_feedback',
                                 'user_feedback_rating', attributes->'user_feedback_rating',
                                 'user_feedback_category', attributes->'user_feedback_category',
                                 'user_feedback_comment', attributes->'user_feedback_comment',
                                 'user_feedback_timestamp', attributes->'user_feedback_timestamp')
            END,
            input = CASE WHEN parent_span_id IS NULL THEN attributes->>'input.value' END,
            output = CASE WHEN parent_span_id IS NULL THEN attributes->>'output.value' END,
            annotation_carrier = len(list_filter(json_keys(attributes), lambda k: starts_with(k, 'annotations.')
                OR starts_with(k, 'trace.annotations.') OR starts_with(k, 'session.annotations.')
                OR starts_with(k, 'evaluations.'))) > 0;
        """,
    ),
    Migration(
        # a span's own annotation_status joins the derived feedback attributes, so that the review queue reads
        # the few spans with feedback state instead of parsing every span's attributes
        "0003_review_status",
        """
        UPDATE span_log SET feedback_attributes = json_object(
                'user_feedback', attributes->'user_feedback',
                'user_feedback_rating', attributes->'user_feedback_rating',
                'user_feedback_category', attributes->'user_feedback_category',
                'user_feedback_comment', attributes->'user_feedback_comment',
                'user_feedback_timestamp', attributes->'user_feedback_timestamp',
                'annotation_status', attributes->'annotation_status')
        WHERE json_exists(attributes, '$."annotation_status"');
        """,
    ),
    Migration(
        # The long text (attributes with prompts and completions, events, a root's input and output, log bodies)
        # compressed with zstd instead of DuckDB's default dictionary/FSST: on the benchmark's 1 M LLM-app spans
        # the attributes column went from 498 to 124 bytes per span, checkpoints compressing it took 5.7 s
        # instead of 13.4 s, and scans of it were no slower. DuckDB cannot change a column's compression in
        # place, so the two tables are rebuilt with the same columns in the same order (row order kept).
        "0004_zstd_text",
        """
        CREATE TABLE span_log_0004 (
            trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL, parent_span_id VARCHAR, trace_state VARCHAR,
            flags BIGINT, "name" VARCHAR NOT NULL, kind VARCHAR NOT NULL, start_time TIMESTAMP_NS NOT NULL,
            end_time TIMESTAMP_NS NOT NULL, duration_ms DOUBLE NOT NULL, status_code VARCHAR NOT NULL,
            status_message VARCHAR, service_name VARCHAR, scope_name VARCHAR, scope_version VARCHAR,
            session_id VARCHAR, client_request_id VARCHAR,
            attributes JSON USING COMPRESSION zstd NOT NULL,
            resource_attributes JSON NOT NULL, scope_attributes JSON,
            events JSON USING COMPRESSION zstd,
            links JSON USING COMPRESSION zstd,
            dropped_attributes_count BIGINT DEFAULT(0) NOT NULL, dropped_events_count BIGINT DEFAULT(0) NOT NULL,
            dropped_links_count BIGINT DEFAULT(0) NOT NULL, received_at TIMESTAMP_NS NOT NULL, model VARCHAR,
            feedback_attributes JSON, annotation_carrier BOOLEAN,
            "input" VARCHAR USING COMPRESSION zstd,
            output VARCHAR USING COMPRESSION zstd
        );
        INSERT INTO span_log_0004 SELECT * FROM span_log;
        DROP TABLE span_log;
        ALTER TABLE span_log_0004 RENAME TO span_log;
        CREATE TABLE log_records_0004 (
            "time" TIMESTAMP_NS, observed_time TIMESTAMP_NS, trace_id VARCHAR, span_id VARCHAR, flags BIGINT,
            severity_number BIGINT, severity_text VARCHAR, event_name VARCHAR,
            body JSON USING COMPRESSION zstd,
            attributes JSON USING COMPRESSION zstd NOT NULL,
            resource_attributes JSON NOT NULL, service_name VARCHAR, scope_name VARCHAR, scope_version VARCHAR,
            dropped_attributes_count BIGINT DEFAULT(0) NOT NULL, received_at TIMESTAMP_NS NOT NULL
        );
        INSERT INTO log_records_0004 SELECT * FROM log_records;
        DROP TABLE log_records;
        ALTER TABLE log_records_0004 RENAME TO log_records;
        """,
    ),
    Migration(
        # The last journal record (store/journal.py) whose rows are in the database, updated in the same
        # transaction as those rows; records after it are applied again at the next read-write open.
        "0005_journal",
        """
        CREATE TABLE _journal (applied_lsn BIGINT NOT NULL);
        INSERT INTO _journal VALUES (0);
        """,
    ),
    Migration(
        # Tables the writer keeps as rows arrive (store/maintained.py), filled here from the rows the file holds:
        # the spans carrying feedback keys of their own, the root spans, and the spans and traces feedback names by
        # a span id alone or an attribute value (which the feedback_targets view of 0001-0005 searched on every read).
        "0006_maintained",
        """
        CREATE TABLE span_feedback_keys (
            trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL, parent_span_id VARCHAR,
            start_time TIMESTAMP_NS NOT NULL, received_at TIMESTAMP_NS NOT NULL, feedback_attributes JSON NOT NULL
        );
        INSERT INTO span_feedback_keys
        SELECT trace_id, span_id, parent_span_id, start_time, received_at, feedback_attributes
        FROM span_log WHERE feedback_attributes IS NOT NULL ORDER BY rowid;
        -- plain text: the dictionary and FSST DuckDB picks for a table filled at once made a lookup by trace id
        -- 4.0 ms at a million spans, plain text 1.1 ms (full runs: 264 -> 270 B a span)
        CREATE TABLE trace_roots (
            trace_id VARCHAR USING COMPRESSION uncompressed NOT NULL,
            span_id VARCHAR USING COMPRESSION uncompressed NOT NULL
        );
        INSERT INTO trace_roots SELECT trace_id, span_id FROM span_log WHERE parent_span_id IS NULL ORDER BY rowid;
        CREATE TABLE feedback_entries (seq BIGINT NOT NULL, "key" VARCHAR, "value" JSON);
        INSERT INTO feedback_entries
        SELECT seq, unnest(list_prepend({'key': NULL::VARCHAR, 'value': NULL::JSON},
                                        map_entries(json_transform(attributes, '"MAP(VARCHAR, JSON)"'))),
                           recursive := true)
        FROM feedback_log ORDER BY seq;
        CREATE TABLE feedback_trace_targets (seq BIGINT NOT NULL, feedback_id VARCHAR NOT NULL, trace_id VARCHAR NOT NULL);
        INSERT INTO feedback_trace_targets
        SELECT f.seq, f.feedback_id, s.trace_id FROM feedback_log f JOIN span_log s ON s.session_id = f.target_value
        WHERE f.target_key = 'session.id' AND f.trace_id IS NULL AND f.span_id IS NULL AND s.annotation_carrier IS NOT TRUE
        UNION
        SELECT f.seq, f.feedback_id, s.trace_id FROM feedback_log f JOIN span_log s ON s.client_request_id = f.target_value
        WHERE f.target_key = 'client_request_id' AND f.trace_id IS NULL AND f.span_id IS NULL
          AND s.annotation_carrier IS NOT TRUE;
        CREATE TABLE feedback_span_targets (
            seq BIGINT NOT NULL, feedback_id VARCHAR NOT NULL, trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL
        );
        INSERT INTO feedback_span_targets
        SELECT DISTINCT f.seq, f.feedback_id, s.trace_id, s.span_id FROM feedback_log f JOIN span_log s ON s.span_id = f.span_id
        WHERE f.trace_id IS NULL AND f.span_id IS NOT NULL;
        """,
    ),
    Migration(
        # Every copy of each span and each feedback record stored more than once (store/maintained.py), which the
        # views of 0001-0006 looked for in the logs on every read. Copies of a span with the same received_at (a
        # request that carried it twice) first move 1 ns apart, in the order stored, as the writer stores them
        # now. The repeats are found by hash first: grouping 2.6 M (trace_id, span_id) pairs needs far more memory
        # than grouping their hashes.
        "0007_copies",
        """
        CREATE TABLE span_copies (
            trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL, received_at TIMESTAMP_NS NOT NULL,
            status_code VARCHAR NOT NULL, annotation_carrier BOOLEAN
        );
        CREATE TABLE feedback_copies (feedback_id VARCHAR NOT NULL, seq BIGINT NOT NULL);
        CREATE TEMP TABLE repeated_0007 AS
        SELECT s.rowid AS r, s.trace_id, s.span_id, s.received_at FROM span_log s
        WHERE hash(s.trace_id, s.span_id) IN (
            SELECT hash(trace_id, span_id) FROM span_log GROUP BY 1 HAVING count(*) > 1
        )
        QUALIFY count(*) OVER (PARTITION BY s.trace_id, s.span_id) > 1;
        UPDATE span_log SET received_at = make_timestamp_ns(epoch_ns(t.received_at) + t.k)
        FROM (
            SELECT r, received_at,
                   row_number() OVER (PARTITION BY trace_id, span_id, received_at ORDER BY r) - 1 AS k
            FROM repeated_0007
        ) t
        WHERE span_log.rowid = t.r AND t.k > 0;
        INSERT INTO span_copies
        SELECT s.trace_id, s.span_id, s.received_at, s.status_code, s.annotation_carrier
        FROM span_log s SEMI JOIN repeated_0007 t ON t.r = s.rowid
        ORDER BY s.rowid;
        DROP TABLE repeated_0007;
        INSERT INTO feedback_copies
        SELECT feedback_id, seq FROM feedback_log
        WHERE feedback_id IN (SELECT feedback_id FROM feedback_log GROUP BY 1 HAVING count(*) > 1)
        ORDER BY seq;
        """,
    ),
    Migration(
        # The root spans that feedback names by trace id or by attribute value, linked by the writer as either side
        # arrives (store/maintained.py), which the feedback_targets view of 0006-0007 found in trace_roots on every
        # read; filled here from the records, the attribute links and the roots the file holds. trace_roots is then
        # searched only by the writer, for the roots of a trace: it is rebuilt keyed by the trace id's 128 bits
        # (trace_key; the text itself only for an id that is not 32 lower-case hex digits, which OTLP never sends),
        # a third of its blocks, and a search for one trace 2.5 ms instead of 11 after a cache trim (740 k roots).
        "0008_root_targets",
        f"""
        CREATE TABLE feedback_root_targets (
            seq BIGINT NOT NULL, feedback_id VARCHAR NOT NULL, trace_id VARCHAR NOT NULL, span_id VARCHAR NOT NULL
        );
        INSERT INTO feedback_root_targets
        SELECT DISTINCT x.seq, x.feedback_id, r.trace_id, r.span_id FROM (
            SELECT seq, feedback_id, trace_id FROM feedback_log WHERE trace_id IS NOT NULL AND span_id IS NULL
            UNION ALL
            SELECT seq, feedback_id, trace_id FROM feedback_trace_targets
        ) x JOIN trace_roots r ON r.trace_id = x.trace_id
        ORDER BY x.seq;
        CREATE TABLE trace_roots_0008 (trace_key UHUGEINT, trace_id VARCHAR, span_id VARCHAR NOT NULL);
        INSERT INTO trace_roots_0008 SELECT {ROOT_COLUMNS} FROM trace_roots ORDER BY rowid;
        DROP TABLE trace_roots;
        ALTER TABLE trace_roots_0008 RENAME TO trace_roots;
        """,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS _migrations (
    version INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    package_version VARCHAR
)
"""


def file_version(con: duckdb.DuckDBPyConnection) -> int:
    """Schema version recorded in the open file (0 for a new, empty file)."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = '_migrations' AND database_name = current_database()"
    ).fetchone()
    if not exists or not exists[0]:
        return 0
    row = con.execute("SELECT coalesce(max(version), 0) FROM _migrations").fetchone()
    return int(row[0]) if row else 0


def check_version(version: int, path: str, known: int = SCHEMA_VERSION) -> None:
    """Refuse a file written by a newer otel-feedback."""
    if version > known:
        raise SchemaError(
            f"{path} has schema version {version}, but this otel-feedback knows only up to "
            f"{known}: it was written by a newer version. Upgrade otel-feedback "
            "(pip install -U otel-feedback) to open it."
        )


def migrate(
    con: duckdb.DuckDBPyConnection,
    path: str,
    package_version: str,
    migrations: tuple[Migration, ...] = MIGRATIONS,
    on_applied: Callable[[Migration], None] | None = None,
) -> list[str]:
    """Apply the migrations the file lacks, each in its own transaction; return their names."""
    con.execute(_MIGRATIONS_DDL)
    current = file_version(con)
    check_version(current, path, len(migrations))
    applied = []
    for version, migration in enumerate(migrations, start=1):
        if version <= current:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(migration.sql)
            con.execute(
                "INSERT INTO _migrations (version, name, package_version) VALUES (?, ?, ?)",
                [version, migration.name, package_version],
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(migration.name)
        if on_applied:
            on_applied(migration)
    return applied
