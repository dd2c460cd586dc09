"""The views that compute current state from the append-only tables. Nothing is updated in place.

Order of creation matters (later views read earlier ones); ``VIEWS`` keeps it. Every view is
``CREATE OR REPLACE``d at each read-write open, so a newer package always installs its own views.

Merge rule (``spans``): a span's current attributes are its own attributes with every feedback patch
that targets it applied per key, last writer wins, ordered by the time the feedback was given, then
by arrival (``seq``). A JSON ``null`` removes the key. Duplicates (same ``feedback_id``; a span
stored twice after a client retry) count once.
"""

from __future__ import annotations


def _fill(template: str, **parts: str) -> str:
    """``template`` with each ``{name}`` replaced (not str.format: the SQL has braces of its own)."""
    for name, text in parts.items():
        assert "{" + name + "}" in template, name
        template = template.replace("{" + name + "}", text)
    return template


_FEEDBACK_BODY = """
-- the first copy of each record (a retry with the same id changes nothing): no earlier copy exists among the
-- copies of the records stored more than once, which the writer keeps (store/maintained.py); so nothing here
-- reads feedback_log beyond the rows asked for
SELECT f.* FROM feedback_log f
LEFT JOIN feedback_copies e ON e.feedback_id = f.feedback_id AND e.seq < f.seq
WHERE e.feedback_id IS NULL
"""
FEEDBACK = "CREATE OR REPLACE VIEW feedback AS" + _FEEDBACK_BODY

SPAN_ROWS = """
CREATE OR REPLACE VIEW span_rows AS
-- the first copy of each span (a client's retry can store one twice): no earlier copy exists among the copies
-- of the spans stored more than once, which the writer keeps (store/maintained.py; copies of one span never
-- share a received_at). So span_log is read once: a lookup of one span at 1 M spans read it twice when the
-- earlier copies were searched for in it, and a full count took 300 ms instead of 5. Written as a left join kept
-- where nothing matched, so that DuckDB carries a filter on trace_id across the join condition to the copies.
SELECT s.* FROM span_log s
LEFT JOIN span_copies e ON e.trace_id = s.trace_id AND e.span_id = s.span_id AND e.received_at < s.received_at
WHERE e.trace_id IS NULL  -- a matched copy has a trace_id (the join compared it), so NULL means none matched
"""

_TARGETS_BODY = """
-- Each record's first copy (its seq: the rows joined by it read only the row groups of the seqs found, as the
-- logs are in seq order) and the spans it names, each once (the writer may link a pair twice:
-- store/maintained.py). No branch searches span_log or the roots: the writer keeps what they join to.
WITH f AS NOT MATERIALIZED (
    SELECT feedback_id, seq, trace_id, span_id FROM {feedback}
)
-- a span named by trace and span id
SELECT feedback_id, trace_id, span_id, seq FROM f WHERE trace_id IS NOT NULL AND span_id IS NOT NULL
UNION ALL
-- a trace: its root span(s); an attribute value: the root span(s) of every trace carrying it (both linked by the
-- writer)
SELECT DISTINCT f.feedback_id, t.trace_id, t.span_id, f.seq
FROM f JOIN feedback_root_targets t ON t.seq = f.seq
UNION ALL
-- a span id alone (Phoenix's span annotations): every span with it (linked by the writer)
SELECT DISTINCT f.feedback_id, t.trace_id, t.span_id, f.seq
FROM f JOIN feedback_span_targets t ON t.seq = f.seq
WHERE f.trace_id IS NULL AND f.span_id IS NOT NULL
"""
FEEDBACK_TARGETS = "CREATE OR REPLACE VIEW feedback_targets AS" + _fill(_TARGETS_BODY, feedback="feedback")

FEEDBACK_AS_OF = """
CREATE OR REPLACE MACRO feedback_as_of(as_of, by_arrival) AS TABLE
SELECT * FROM feedback
WHERE CASE WHEN by_arrival THEN received_at ELSE feedback_time END <= as_of
"""

_PATCHES_BODY = """
-- per targeted span: the merge patch of its feedback (latest value per key, a JSON null kept so that it
-- removes the span's own key), how many records and when the latest was given
-- One pipeline with no shared intermediate (DuckDB would materialise it whole), so a filter on trace_id
-- reaches the feedback log and one trace's patches are computed alone.
WITH kv AS (
    -- each record gives one row per key it sets, plus one row with a NULL key that counts the record: its
    -- attributes taken apart by the writer (feedback_entries, store/maintained.py), not here on every read
    SELECT t.trace_id, t.span_id, f.feedback_time, f.seq, e.key, e.value
    FROM {feedback} f JOIN {targets} t ON t.seq = f.seq JOIN feedback_entries e ON e.seq = f.seq
), latest AS (
    SELECT trace_id, span_id, key, arg_max_null(value, (feedback_time, seq)) AS value,
           count(*) AS records, max(feedback_time) AS last_feedback_time
    FROM kv GROUP BY ALL
)
SELECT trace_id, span_id,
       -- keys in order, so the same feedback always gives the same JSON text
       CASE WHEN count(key) > 0 THEN
           to_json(map_from_entries(list((key, value) ORDER BY key) FILTER (WHERE key IS NOT NULL)))
       END AS patch,
       sum(records) FILTER (WHERE key IS NULL) AS feedback_count,
       max(last_feedback_time) FILTER (WHERE key IS NULL) AS last_feedback_time
FROM latest GROUP BY trace_id, span_id
"""

# Each state has two forms from one text: a macro as of a time (``*_as_of``) and a view of the current state
# with the macro's parameters already filled in, so DuckDB does not plan the as-of conditions. At 2 M spans a
# ``spans`` lookup that reads no row went from 34 to 15 ms, point lookups from 46-56 to 43-50 ms. The views below
# that read the current state use these.
FEEDBACK_PATCHES = "CREATE OR REPLACE MACRO feedback_patches_as_of(as_of, by_arrival) AS TABLE" + _fill(
    _PATCHES_BODY, feedback="feedback_as_of(as_of, by_arrival)", targets="feedback_targets"
)
FEEDBACK_PATCHES_NOW = "CREATE OR REPLACE VIEW feedback_patches AS" + _fill(
    _PATCHES_BODY, feedback="feedback", targets="feedback_targets"
)

# The user_feedback* columns of a span from its own feedback keys (derived at decode) merged with its patch: CTEs
# over {source} (which has feedback_attributes and patch) ending in `derived`: {source}'s columns and those.
_DERIVED_CTES = """known AS (
    SELECT *,
           json_extract(CASE WHEN patch IS NULL THEN feedback_attributes
                             ELSE json_merge_patch(coalesce(feedback_attributes, '{}'), patch) END,
                        ['$."user_feedback"', '$."user_feedback_rating"', '$."user_feedback_category"',
                         '$."user_feedback_comment"', '$."user_feedback_timestamp"', '$."annotation_status"']) AS k
    FROM {source}
), cols AS (
    SELECT * EXCLUDE (k),
           k[1]->>'$' AS user_feedback,
           TRY_CAST(k[2]->>'$' AS DOUBLE) AS user_feedback_rating,
           k[3]->>'$' AS user_feedback_category,
           k[4]->>'$' AS user_feedback_comment,
           k[5] AS ts,
           k[6]->>'$' AS annotation_status
    FROM known
), derived AS (
    SELECT * EXCLUDE (ts),
           CASE WHEN ts->>'$' IS NOT NULL THEN
               coalesce(
                   TRY_CAST(TRY_CAST(ts->>'$' AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS TIMESTAMP_NS),
                   TRY_CAST(ts->>'$' AS TIMESTAMP_NS),
                   -- epoch seconds (or nanoseconds above 1e17), as feedback.parse_time reads them
                   CASE WHEN json_type(ts) IN ('UBIGINT', 'BIGINT', 'DOUBLE') THEN
                       TRY(make_timestamp_ns(CASE
                           WHEN (ts->>'$')::DOUBLE > 1e17 THEN (ts->>'$')::HUGEINT
                           ELSE round((ts->>'$')::DECIMAL(38, 9) * 1000000000)
                       END::BIGINT))
                   END)
           END AS user_feedback_timestamp
    FROM cols
)"""

_ARRIVED = "\n    WHERE NOT by_arrival OR s.received_at <= CAST(as_of AS TIMESTAMP_NS)"
"""{arrived} of the as-of macros: by arrival, only what the file held then (every ``s`` it is put after)."""

_SPAN_FEEDBACK_BODY = _fill(
    """
-- The feedback state of every stored span that has any: its own user_feedback* keys (derived at decode,
-- NULL for almost every span) merged with its patches. Only those few spans are read, so the traces view
-- pays for feedback in proportion to the feedback, not to the spans.
WITH copies AS (
    -- stored copies (by arrival: received by then) of the spans with feedback keys of their own (the writer keeps
    -- them apart, store/maintained.py) and of the spans with patches; the patches are read once, in this join, so
    -- that a filter on trace_id reaches them
    SELECT s.trace_id, s.span_id, s.parent_span_id, s.start_time, s.received_at, s.feedback_attributes,
           NULL::JSON AS patch, NULL::BIGINT AS feedback_count, NULL::TIMESTAMP_NS AS last_feedback_time
    FROM span_feedback_keys s{arrived}
    UNION ALL
    SELECT s.trace_id, s.span_id, s.parent_span_id, s.start_time, s.received_at, NULL::JSON,
           p.patch, p.feedback_count, p.last_feedback_time
    FROM span_log s JOIN {patches} p USING (trace_id, span_id){arrived}
), stored AS (
    -- own keys: those of the first copy that has any
    SELECT trace_id, span_id, arg_min_null(parent_span_id, received_at) AS parent_span_id,
           min(start_time) AS start_time, arg_min(feedback_attributes, received_at) AS feedback_attributes,
           any_value(patch) AS patch, coalesce(any_value(feedback_count), 0) AS feedback_count,
           any_value(last_feedback_time) AS last_feedback_time
    FROM copies GROUP BY trace_id, span_id
), {derived}
SELECT trace_id, span_id, parent_span_id, start_time, patch, feedback_count, last_feedback_time,
       user_feedback, user_feedback_rating, user_feedback_category, user_feedback_comment, annotation_status,
       user_feedback_timestamp
FROM derived
""",
    derived=_fill(_DERIVED_CTES, source="stored"),
)

SPAN_FEEDBACK_AS_OF = "CREATE OR REPLACE MACRO span_feedback_as_of(as_of, by_arrival) AS TABLE" + (
    _fill(
        _SPAN_FEEDBACK_BODY, patches="feedback_patches_as_of(CAST(as_of AS TIMESTAMP_NS), by_arrival)", arrived=_ARRIVED
    )
)
SPAN_FEEDBACK_NOW = "CREATE OR REPLACE VIEW span_feedback AS" + _fill(
    _SPAN_FEEDBACK_BODY, patches="feedback_patches", arrived=""
)

_SPANS_BODY = _fill(
    """
-- The first stored copy of each span with its feedback merged in. The feedback state comes from the few spans
-- with any (patches, and the spans with feedback keys of their own that the writer keeps apart), so a filter on
-- it (user_feedback = 'negative') reads those first, and a lookup by trace id reads span_log only for span_rows.
WITH own AS (
    -- own keys: those of the first copy that has any
    SELECT trace_id, span_id, arg_min(feedback_attributes, received_at) AS feedback_attributes
    FROM span_feedback_keys s{arrived}
    GROUP BY trace_id, span_id
), state AS (
    SELECT trace_id, span_id, o.feedback_attributes, p.patch, coalesce(p.feedback_count, 0) AS feedback_count,
           p.last_feedback_time
    FROM own o FULL JOIN {patches} p USING (trace_id, span_id)
), {derived}
SELECT s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.service_name, s.start_time, s.end_time,
       s.duration_ms, s.status_code, s.status_message,
       CASE WHEN f.patch IS NULL THEN s.attributes ELSE json_merge_patch(s.attributes, f.patch) END AS attributes,
       f.user_feedback, f.user_feedback_rating, f.user_feedback_category, f.user_feedback_comment,
       f.user_feedback_timestamp, s.model, coalesce(f.feedback_count, 0) AS feedback_count, f.last_feedback_time,
       s.* EXCLUDE (trace_id, span_id, parent_span_id, name, kind, service_name, start_time, end_time,
                    duration_ms, status_code, status_message, attributes, model, feedback_attributes),
       s.attributes AS span_attributes
FROM span_rows s
LEFT JOIN derived f USING (trace_id, span_id){arrived}
""",
    derived=_fill(_DERIVED_CTES, source="state"),
)

# by arrival: what the file held then, so spans not yet received are not there either
SPANS_AS_OF = "CREATE OR REPLACE MACRO spans_as_of(as_of, by_arrival := false) AS TABLE" + _fill(
    _SPANS_BODY, patches="feedback_patches_as_of(CAST(as_of AS TIMESTAMP_NS), by_arrival)", arrived=_ARRIVED
)
SPANS = "CREATE OR REPLACE VIEW spans AS" + _fill(_SPANS_BODY, patches="feedback_patches", arrived="")

ORPHAN_FEEDBACK = """
CREATE OR REPLACE VIEW orphan_feedback AS
SELECT f.* FROM feedback f
ANTI JOIN (
    SELECT t.feedback_id FROM feedback_targets t
    SEMI JOIN span_log s ON s.trace_id = t.trace_id AND s.span_id = t.span_id
) found ON found.feedback_id = f.feedback_id
"""

_ANNOTATIONS_BODY = """
SELECT t.trace_id, t.span_id, f.name, f.label, f.score, f.explanation, f.expected, f.error, f.metadata,
       f.annotator_kind, f.source_id, f.feedback_time, f.received_at, f.feedback_id, f.channel,
       count(*) OVER (PARTITION BY t.trace_id, t.span_id, f.name, f.annotator_kind, f.source_id) AS versions
FROM {feedback} f JOIN {targets} t ON t.seq = f.seq
WHERE f.name IS NOT NULL
QUALIFY row_number() OVER (
    PARTITION BY t.trace_id, t.span_id, f.name, f.annotator_kind, f.source_id
    ORDER BY f.feedback_time DESC, f.seq DESC) = 1
"""
ANNOTATIONS = "CREATE OR REPLACE VIEW annotations AS" + _fill(
    _ANNOTATIONS_BODY, feedback="feedback", targets="feedback_targets"
)

_TRACES_BODY = """
-- Aggregations each only as wide as it must be: span statistics, counts and the root's fields over span_log,
-- and feedback over the few spans that have any. Traces made only of annotation carrier spans (OpenInference
-- feedback sent as spans) are not traces of the application. The scope condition in stats narrows the traces
-- aggregated (TRUE for all of them).
WITH stats AS (
    -- one pass over span_log: min, max and the root's fields do not change when a client's retry stored a
    -- span twice, so no deduplication here; each root field is its own aggregate, which DuckDB drops when
    -- a query does not use it (so the attributes column is read only when root_attributes is asked for). The
    -- counts take every copy; `copies` takes the extra ones off.
    SELECT trace_id,
           count(*) AS stored_spans,
           count(*) FILTER (WHERE status_code = 'ERROR') AS stored_errors,
           min(start_time) AS start_time,
           max(end_time) AS end_time,
           any_value(service_name) AS any_service,
           any_value(model) FILTER (WHERE model IS NOT NULL) AS model,
           arg_min(span_id, start_time) FILTER (WHERE parent_span_id IS NULL) AS root_span_id,
           arg_min(name, start_time) FILTER (WHERE parent_span_id IS NULL) AS root_name,
           arg_min(service_name, start_time) FILTER (WHERE parent_span_id IS NULL) AS root_service_name,
           arg_min(status_code, start_time) FILTER (WHERE parent_span_id IS NULL) AS root_status_code,
           arg_min_null(input, start_time) FILTER (WHERE parent_span_id IS NULL) AS input,
           arg_min_null(output, start_time) FILTER (WHERE parent_span_id IS NULL) AS output,
           arg_min(attributes, start_time) FILTER (WHERE parent_span_id IS NULL) AS root_span_attributes
    FROM span_log
    WHERE annotation_carrier IS NOT TRUE  -- OpenInference annotation carriers are feedback, not answers
      AND {scope}
    GROUP BY trace_id
), copies AS (
    -- a span counts once however many copies a client's retries stored: the extra copies, from the copies of
    -- the spans stored more than once (store/maintained.py); counting distinct span ids read span_log twice more
    SELECT trace_id, sum(n - least(n, 1)) AS extra_spans, sum(e - least(e, 1)) AS extra_errors
    FROM (
        SELECT trace_id, span_id, count(*) AS n, count(*) FILTER (WHERE status_code = 'ERROR') AS e
        FROM span_copies WHERE annotation_carrier IS NOT TRUE GROUP BY trace_id, span_id
    ) GROUP BY trace_id
), fb AS (
    -- feedback, read from the few spans that have any: a root span's own values (a span without a parent;
    -- the earliest one with the value if a broken trace has several) win over the latest on any span
    SELECT trace_id,
           sum(feedback_count) AS feedback_count,
           arg_max(user_feedback, last_feedback_time) FILTER (WHERE user_feedback IS NOT NULL) AS any_feedback,
           arg_max(user_feedback_rating, last_feedback_time) FILTER (WHERE user_feedback_rating IS NOT NULL)
               AS any_rating,
           arg_max(user_feedback_category, last_feedback_time) FILTER (WHERE user_feedback_category IS NOT NULL)
               AS any_category,
           arg_max(user_feedback_comment, last_feedback_time) FILTER (WHERE user_feedback_comment IS NOT NULL)
               AS any_comment,
           arg_min(user_feedback, start_time) FILTER (WHERE parent_span_id IS NULL) AS r_user_feedback,
           arg_min(user_feedback_rating, start_time) FILTER (WHERE parent_span_id IS NULL) AS r_user_feedback_rating,
           arg_min(user_feedback_category, start_time) FILTER (WHERE parent_span_id IS NULL)
               AS r_user_feedback_category,
           arg_min(user_feedback_comment, start_time) FILTER (WHERE parent_span_id IS NULL) AS r_user_feedback_comment,
           arg_min(user_feedback_timestamp, start_time) FILTER (WHERE parent_span_id IS NULL) AS user_feedback_timestamp,
           -- the patch of the root span, for root_attributes (checked against the root's id below)
           arg_min(span_id, start_time) FILTER (WHERE parent_span_id IS NULL AND patch IS NOT NULL) AS patched_root,
           arg_min(patch, start_time) FILTER (WHERE parent_span_id IS NULL AND patch IS NOT NULL) AS root_patch
    FROM {span_feedback}
    GROUP BY trace_id
), joined AS (
    SELECT s.trace_id, s.root_span_id, s.root_name,
           coalesce(s.root_service_name, s.any_service) AS service_name, s.model,
           s.start_time, s.end_time,
           date_diff('microsecond', s.start_time, s.end_time) / 1000.0 AS duration_ms,
           (s.stored_spans - coalesce(c.extra_spans, 0))::BIGINT AS span_count,
           (s.stored_errors - coalesce(c.extra_errors, 0))::BIGINT AS error_count,
           CASE WHEN s.stored_errors > 0 THEN 'ERROR' ELSE coalesce(s.root_status_code, 'UNSET') END AS status_code,
           s.input, s.output,
           coalesce(f.r_user_feedback, f.any_feedback) AS user_feedback,
           coalesce(f.r_user_feedback_rating, f.any_rating) AS user_feedback_rating,
           coalesce(f.r_user_feedback_category, f.any_category) AS user_feedback_category,
           coalesce(f.r_user_feedback_comment, f.any_comment) AS user_feedback_comment,
           f.user_feedback_timestamp, coalesce(f.feedback_count, 0) AS feedback_count,
           CASE WHEN f.patched_root = s.root_span_id THEN json_merge_patch(s.root_span_attributes, f.root_patch)
                ELSE s.root_span_attributes END AS root_attributes
    FROM stats s
    LEFT JOIN copies c USING (trace_id)
    LEFT JOIN fb f USING (trace_id)
)
SELECT trace_id, root_span_id, root_name, service_name, model, start_time, end_time, duration_ms, span_count,
       error_count, status_code, input, output, user_feedback, user_feedback_rating,
       user_feedback_category, user_feedback_comment, user_feedback_timestamp, feedback_count,
       CASE
           WHEN user_feedback = 'positive' THEN 'positive'
           WHEN user_feedback = 'negative' THEN 'negative'
           WHEN user_feedback_rating >= 4 THEN 'positive'
           WHEN user_feedback_rating <= 2 THEN 'negative'
           WHEN feedback_count > 0 AND (user_feedback IS NOT NULL OR user_feedback_rating IS NOT NULL) THEN 'neutral'
       END AS sentiment,
       -- what users said (thumbs, stars, a category or a comment); judges' and code's scores are not counted
       user_feedback IS NOT NULL OR user_feedback_rating IS NOT NULL OR user_feedback_category IS NOT NULL
           OR user_feedback_comment IS NOT NULL AS has_user_feedback,
       root_attributes
FROM joined
"""


TRACES = "CREATE OR REPLACE VIEW traces AS\n" + _TRACES_BODY.format(scope="TRUE", span_feedback="span_feedback")

_FEEDBACK_SCOPE = (
    # the traces with any feedback (a superset of those with negative feedback), so that worst_traces
    # aggregates those traces' spans, not every span
    "trace_id IN (SELECT trace_id FROM {targets} "
    "UNION ALL SELECT trace_id FROM span_log WHERE feedback_attributes IS NOT NULL)"
)
FEEDBACK_TRACES = "CREATE OR REPLACE VIEW feedback_traces AS\n" + _TRACES_BODY.format(
    scope=_FEEDBACK_SCOPE.format(targets="feedback_targets"), span_feedback="span_feedback"
)


def _metrics(name: str, key: str, alias: str) -> str:
    """A feedback-metrics view grouped by ``key``: rate, positive rate, mean rating."""
    return f"""
CREATE OR REPLACE VIEW {name} AS
SELECT {key} AS {alias},
       count(*) AS traces,
       count(*) FILTER (WHERE has_user_feedback) AS traces_with_feedback,
       count(*) FILTER (WHERE has_user_feedback) / count(*) AS feedback_rate,
       count(*) FILTER (WHERE sentiment = 'positive') AS positive,
       count(*) FILTER (WHERE sentiment = 'negative') AS negative,
       count(*) FILTER (WHERE sentiment = 'positive')
           / nullif(count(*) FILTER (WHERE sentiment IN ('positive', 'negative')), 0) AS positive_rate,
       avg(user_feedback_rating) AS mean_rating,
       count(user_feedback_rating) AS ratings
FROM traces
GROUP BY ALL
ORDER BY {alias}
"""


FEEDBACK_SUMMARY = _metrics("feedback_summary", "'all'", "scope")
FEEDBACK_BY_HOUR = _metrics("feedback_by_hour", "date_trunc('hour', start_time)", "hour")
FEEDBACK_BY_DAY = _metrics("feedback_by_day", "date_trunc('day', start_time)", "day")
FEEDBACK_BY_SERVICE = _metrics("feedback_by_service", "service_name", "service_name")
FEEDBACK_BY_MODEL = _metrics("feedback_by_model", "model", "model")

FEEDBACK_CATEGORIES = """
CREATE OR REPLACE VIEW feedback_categories AS
SELECT user_feedback_category AS category,
       count(*) AS traces,
       count(*) / sum(count(*)) OVER () AS share,
       count(*) FILTER (WHERE sentiment = 'negative') AS negative
FROM traces WHERE user_feedback_category IS NOT NULL
GROUP BY ALL ORDER BY traces DESC, category
"""

_WORST_BODY = """
ann AS (SELECT * FROM w_annotations), patches AS (
    -- the spans that evaluations and child feedback name are looked up in span_log narrowed to those
    -- span ids first (one copy each), not through the deduplicated span_rows of a million spans
    SELECT * FROM w_patches WHERE patch IS NOT NULL
), named AS (
    SELECT trace_id, span_id, arg_min(name, received_at) AS name, min(start_time) AS start_time,
           arg_min(parent_span_id, received_at) AS parent_span_id
    FROM span_log
    SEMI JOIN (SELECT trace_id, span_id FROM ann UNION SELECT trace_id, span_id FROM patches) n
        USING (trace_id, span_id)
    GROUP BY trace_id, span_id
), evals AS (
    SELECT a.trace_id,
           list({'span_name': s.name, 'name': a.name, 'label': a.label, 'score': a.score,
                 'explanation': a.explanation, 'annotator_kind': a.annotator_kind, 'source_id': a.source_id}
                ORDER BY s.start_time, a.name, a.annotator_kind, a.source_id NULLS FIRST) AS evaluations
    FROM ann a JOIN named s USING (trace_id, span_id)
    GROUP BY a.trace_id
), child_feedback AS (
    SELECT p.trace_id, list({'span_name': s.name, 'patch': p.patch} ORDER BY s.start_time) AS child_feedback
    FROM patches p
    JOIN named s USING (trace_id, span_id)
    WHERE s.parent_span_id IS NOT NULL
    GROUP BY p.trace_id
), neg AS (
    -- the negative traces first, without their text: only those then get input and output from span_log
    SELECT * EXCLUDE (input, output) FROM w_traces WHERE sentiment = 'negative'
), io AS (
    SELECT trace_id, arg_min_null(input, start_time) AS input, arg_min_null(output, start_time) AS output
    FROM span_log
    WHERE parent_span_id IS NULL AND annotation_carrier IS NOT TRUE AND trace_id IN (SELECT trace_id FROM neg)
    GROUP BY trace_id
), expected AS (
    SELECT t.trace_id, arg_max(f.expected, f.feedback_time) AS expected
    FROM w_feedback f JOIN w_targets t ON t.seq = f.seq
    WHERE f.expected IS NOT NULL GROUP BY t.trace_id
)
SELECT t.trace_id, t.start_time, t.service_name, t.model, t.root_name, io.input, io.output,
       t.user_feedback, t.user_feedback_rating, t.user_feedback_category, t.user_feedback_comment,
       x.expected, t.status_code, t.duration_ms, e.evaluations, c.child_feedback
FROM neg t
LEFT JOIN io USING (trace_id)
LEFT JOIN evals e USING (trace_id)
LEFT JOIN child_feedback c USING (trace_id)
LEFT JOIN expected x USING (trace_id)
ORDER BY {order}
"""

WORST_TRACES_ORDER = "user_feedback_rating ASC NULLS LAST, start_time DESC, trace_id"
"""The order of ``worst_traces`` (its output columns), for queries that filter its rows and keep it."""


# worst_traces computes the feedback, its targets, the annotations, the patches, the spans' feedback state and
# the traces with feedback once each, as materialised CTEs, from the same texts as those views. Written through
# the views, DuckDB inlined every one of them wherever it was read: the plan read feedback_log 18 times, built 33
# hash joins and 25 hash aggregates, and needed over 183 MB (it failed at memory_limit 192MB with 2 threads over
# 2.2 M spans; peak 340 MB at 512MB, of which 164 MB hash tables). Now: peak 231 MB (64 MB hash tables), it runs at
# 96MB, and 0.34 -> 0.24-0.28 s. A filter on its rows (a trace, a service) no longer reaches inside.
WORST_TRACES = f"""
CREATE OR REPLACE VIEW worst_traces AS
WITH w_feedback AS MATERIALIZED ({_FEEDBACK_BODY}
), w_targets AS MATERIALIZED ({_fill(_TARGETS_BODY, feedback="w_feedback")}
), w_annotations AS MATERIALIZED ({_fill(_ANNOTATIONS_BODY, feedback="w_feedback", targets="w_targets")}
), w_patches AS MATERIALIZED ({_fill(_PATCHES_BODY, feedback="w_feedback", targets="w_targets")}
), w_span_feedback AS MATERIALIZED ({_fill(_SPAN_FEEDBACK_BODY, patches="w_patches", arrived="")}
), w_traces AS MATERIALIZED ({
    _TRACES_BODY.format(scope=_FEEDBACK_SCOPE.format(targets="w_targets"), span_feedback="w_span_feedback")
}
), {_fill(_WORST_BODY, order=WORST_TRACES_ORDER).strip()}"""

JUDGE_AGREEMENT = """
CREATE OR REPLACE VIEW judge_agreement AS
WITH per_kind AS (
    SELECT trace_id, span_id, name, annotator_kind,
           arg_max(label, feedback_time) AS label, arg_max(score, feedback_time) AS score
    FROM annotations WHERE annotator_kind IN ('HUMAN', 'LLM')
    GROUP BY ALL
), pairs AS (
    SELECT h.name, h.label AS human_label, l.label AS llm_label, h.score AS human_score, l.score AS llm_score
    FROM per_kind h JOIN per_kind l USING (trace_id, span_id, name)
    WHERE h.annotator_kind = 'HUMAN' AND l.annotator_kind = 'LLM'
), lp AS (
    SELECT * FROM pairs WHERE human_label IS NOT NULL AND llm_label IS NOT NULL
), obs AS (
    SELECT name, count(*) AS label_pairs, avg(CASE WHEN human_label = llm_label THEN 1.0 ELSE 0.0 END) AS p_o
    FROM lp GROUP BY name
), hk AS (SELECT name, human_label AS k, count(*) AS c FROM lp GROUP BY ALL),
lk AS (SELECT name, llm_label AS k, count(*) AS c FROM lp GROUP BY ALL),
pe AS (SELECT hk.name, sum(hk.c * lk.c) AS s FROM hk JOIN lk USING (name, k) GROUP BY hk.name),
sc AS (
    SELECT name, count(*) AS score_pairs, corr(human_score, llm_score) AS score_correlation,
           avg(abs(human_score - llm_score)) AS mean_abs_score_diff
    FROM pairs WHERE human_score IS NOT NULL AND llm_score IS NOT NULL GROUP BY name
), labels AS (
    SELECT obs.name, obs.label_pairs, obs.p_o AS label_agreement,
           coalesce(pe.s, 0) / (obs.label_pairs * obs.label_pairs) AS p_e
    FROM obs LEFT JOIN pe USING (name)
)
SELECT coalesce(labels.name, sc.name) AS name, labels.label_pairs, labels.label_agreement,
       CASE WHEN labels.p_e < 1 THEN (labels.label_agreement - labels.p_e) / (1 - labels.p_e) END AS cohen_kappa,
       sc.score_pairs, sc.score_correlation, sc.mean_abs_score_diff
FROM labels FULL JOIN sc USING (name)
ORDER BY name
"""

REVIEW_QUEUE = """
CREATE OR REPLACE VIEW review_queue AS
-- read from the few spans with feedback state (their own annotation_status is derived at decode), not from
-- every span's attributes
WITH f AS (
    SELECT * FROM span_feedback WHERE annotation_status = 'empty'
), s AS (
    SELECT trace_id, span_id, arg_min(name, received_at) AS name, arg_min(service_name, received_at) AS service_name,
           min(start_time) AS start_time, arg_min(attributes, received_at) AS attributes
    FROM span_log SEMI JOIN f USING (trace_id, span_id)
    GROUP BY trace_id, span_id
), merged AS (
    SELECT s.trace_id, s.span_id, s.name, s.service_name, s.start_time,
           CASE WHEN f.patch IS NULL THEN s.attributes ELSE json_merge_patch(s.attributes, f.patch) END AS attributes,
           f.user_feedback, f.user_feedback_rating, f.user_feedback_comment, f.last_feedback_time
    FROM s JOIN f USING (trace_id, span_id)
)
SELECT trace_id, span_id, name, service_name, start_time,
       attributes->>'input.value' AS input, attributes->>'output.value' AS output,
       user_feedback, user_feedback_rating, user_feedback_comment, last_feedback_time
FROM merged
ORDER BY last_feedback_time NULLS LAST, start_time
"""

EVALUATION_DATASET = """
CREATE OR REPLACE VIEW evaluation_dataset AS
SELECT trace_id, input, output, expected, user_feedback AS feedback, user_feedback_rating AS rating,
       user_feedback_comment AS comment, user_feedback_category AS category, evaluations, child_feedback
FROM worst_traces
"""

FEEDBACK_CONFIGS = """
CREATE OR REPLACE VIEW feedback_configs AS
SELECT name, type, labels, min_value, max_value, description, declared_at
FROM feedback_config
QUALIFY row_number() OVER (PARTITION BY name ORDER BY declared_at DESC) = 1
ORDER BY name
"""

VIEWS: tuple[tuple[str, str], ...] = (
    ("feedback", FEEDBACK),
    ("span_rows", SPAN_ROWS),
    ("feedback_targets", FEEDBACK_TARGETS),
    ("feedback_as_of", FEEDBACK_AS_OF),
    ("feedback_patches_as_of", FEEDBACK_PATCHES),
    ("feedback_patches", FEEDBACK_PATCHES_NOW),
    ("span_feedback_as_of", SPAN_FEEDBACK_AS_OF),
    ("span_feedback", SPAN_FEEDBACK_NOW),
    ("spans_as_of", SPANS_AS_OF),
    ("spans", SPANS),
    ("orphan_feedback", ORPHAN_FEEDBACK),
    ("annotations", ANNOTATIONS),
    ("traces", TRACES),
    ("feedback_traces", FEEDBACK_TRACES),
    ("feedback_summary", FEEDBACK_SUMMARY),
    ("feedback_by_hour", FEEDBACK_BY_HOUR),
    ("feedback_by_day", FEEDBACK_BY_DAY),
    ("feedback_by_service", FEEDBACK_BY_SERVICE),
    ("feedback_by_model", FEEDBACK_BY_MODEL),
    ("feedback_categories", FEEDBACK_CATEGORIES),
    ("worst_traces", WORST_TRACES),
    ("judge_agreement", JUDGE_AGREEMENT),
    ("review_queue", REVIEW_QUEUE),
    ("evaluation_dataset", EVALUATION_DATASET),
    ("feedback_configs", FEEDBACK_CONFIGS),
)
"""(name, DDL) of every view, in creation order."""
