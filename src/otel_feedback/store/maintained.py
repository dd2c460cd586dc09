"""Tables the writer keeps beside the logs, in the transaction that appends the rows they follow from, so that
reads of the current feedback state need not search ``span_log``. Migration ``0006_maintained`` (:mod:`.schema`)
fills them from the rows a file already holds. Each is a function of the logs: rebuilding one from them (as the
migration does) gives the same answer.

**The spans carrying feedback keys of their own** (``span_feedback_keys``: trace_id, span_id, parent_span_id,
start_time, received_at, feedback_attributes): every stored copy of a span whose ``feedback_attributes`` (its
``user_feedback*`` keys, derived at decode) is not NULL: well under 1 % of spans. ``spans`` and ``span_feedback``
read them here instead of looking for them among every span.

**Each record's attributes taken apart** (``feedback_entries``: seq, key, value): one row per key a record sets
(a JSON null kept: it removes the key), and one with a NULL key that counts the record. The patches of every
span are computed from these; taking the JSON apart on every read was a quarter of ``feedback_by_hour``
(54 ms of 233 at 51 k records).

**The root spans** (``trace_roots``: trace_id, span_id): every stored copy of a span without a parent, a fifth of
the spans in two narrow columns. Feedback that names a trace (or the traces carrying an attribute value) lands on
their roots, found here.

**What feedback names other than by trace id (and span id).** A feedback record names its target one of four
ways: a trace and a span id (the span itself), a trace id alone (its root span or spans), a span id alone (every
stored span with that id: Phoenix's span annotations), or an attribute value (``session.id``,
``client_request_id``: the root spans of every trace carrying it, annotation carrier spans aside). Until session 9
the ``feedback_targets`` view resolved the last three on every read, each with a scan of ``span_log``: a point
lookup in ``spans`` paid for three such scans whether or not any such feedback existed (with random trace ids,
~5-10 ms each at a million spans). The writer now resolves the two that need a search, when either side arrives:

- ``feedback_trace_targets`` (seq, feedback_id, trace_id): a record naming an attribute value, linked to each
  trace carrying it: when the record arrives (the traces stored by then, this transaction's included) and when a
  span carrying the value arrives (the records stored by then);
- ``feedback_span_targets`` (seq, feedback_id, trace_id, span_id): a record naming a span id alone, linked to each
  span with that id, likewise from either side.

A trace id alone needs no search: the view joins such records to ``trace_roots`` (as it joins the attribute links),
a join of small tables. Resolving it here instead cost a search of ``span_log``'s roots per apply (~25 ms at
2.6 M spans, 100-160 ms in a server during 500 PATCHes a second; PATCH p99 3 -> 4-9 ms).

A pair can be found by both sides in one transaction (a record and its span arriving together), so rows may
repeat; the view counts each (record, span) once. ``seq`` is the record's own row in ``feedback_log``: a client's
retry of a record (same feedback id) resolves again under its own seq, and the view keeps the targets of the first
copy only, as it keeps that copy's attributes.
"""

from __future__ import annotations

import threading

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..model import TARGET_KEYS

_BY_ATTRIBUTE = "f.trace_id IS NULL AND f.span_id IS NULL"
_ENTRIES = (
    "SELECT seq, unnest(list_prepend({{'key': NULL::VARCHAR, 'value': NULL::JSON}}, "
    "map_entries(json_transform(attributes, '\"MAP(VARCHAR, JSON)\"'))), recursive := true) FROM {source}"
)
"""A record's entries: the same SELECT fills ``feedback_entries`` in migration 0006 (:mod:`.schema`)."""
_BY_SPAN_ID = "f.trace_id IS NULL AND f.span_id IS NOT NULL"


class Known:
    """What the file's feedback holds that decides which statements a span batch needs, so that a batch that can
    resolve nothing costs no statement (each costs ~1.5 ms however little it finds). It only grows, as the logs
    do; one per database instance, loaded at open, kept by :func:`statements` as feedback arrives (a transaction
    that then fails leaves it larger than the file: a statement more, never one less)."""

    def __init__(self, span_ids: bool = False) -> None:
        self.span_ids = span_ids
        """Whether any record names a span id alone."""
        self.values: dict[str, set[str]] = {key: set() for key in TARGET_KEYS}
        """The attribute values records name, by key."""
        self._arrays: dict[str, pa.Array] | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection) -> Known:
        rows = con.execute("SELECT EXISTS (FROM feedback_log f WHERE " + _BY_SPAN_ID + ")").fetchall()
        known = cls(bool(rows[0][0]))
        for key, value in con.execute(
            "SELECT DISTINCT target_key, target_value FROM feedback_log WHERE target_key IS NOT NULL"
        ).fetchall():
            known.values.setdefault(key, set()).add(value)
        return known

    def named(self, spans: pa.Table) -> bool:
        """Whether a span of ``spans`` carries an attribute value some record names."""
        with self._lock:
            if self._arrays is None:  # built again only after new values arrived
                self._arrays = {k: pa.array(sorted(v), pa.string()) for k, v in self.values.items() if v}
            wanted = self._arrays
        for key, values in wanted.items():
            column = TARGET_KEYS[key]
            if column in spans.column_names and pc.any(pc.is_in(spans.column(column), value_set=values)).as_py():
                return True
        return False

    def saw(self, span_ids: bool, keys: pa.Array, values: pa.Array) -> None:
        with self._lock:
            self.span_ids = self.span_ids or span_ids
            if keys.null_count == len(keys):
                return
            for key, value in zip(keys.to_pylist(), values.to_pylist(), strict=True):
                if key is not None and value is not None and value not in self.values.setdefault(key, set()):
                    self.values[key].add(value)
                    self._arrays = None


def _attribute_links(spans: str | None, feedback: str | None) -> str:
    """SELECT (seq, feedback_id, trace_id) of the attribute links this transaction's rows make that were not made
    before (a trace's spans carry its session id over and over)."""
    parts = []
    for key, column in TARGET_KEYS.items():
        if feedback is not None:
            # the record arrives: every stored trace carrying the value (this transaction's spans included)
            parts.append(
                f"SELECT f.seq, f.feedback_id, s.trace_id FROM {feedback} f JOIN span_log s ON s.{column} = "
                f"f.target_value WHERE f.target_key = '{key}' AND {_BY_ATTRIBUTE} AND s.annotation_carrier IS NOT TRUE"
            )
        if spans is not None:
            # a span carrying the value arrives: every stored record naming it (this transaction's included)
            parts.append(
                f"SELECT f.seq, f.feedback_id, v.trace_id FROM {spans} v JOIN feedback_log f ON f.target_value = "
                f"v.{column} WHERE f.target_key = '{key}' AND {_BY_ATTRIBUTE} AND v.annotation_carrier IS NOT TRUE"
            )
    union = "\n    UNION ".join(parts)
    return f"SELECT * FROM (\n    {union}\n) EXCEPT SELECT seq, feedback_id, trace_id FROM feedback_trace_targets"


def statements(spans: tuple[str, pa.Table] | None, feedback: tuple[str, pa.Table] | None, known: Known) -> list[str]:
    """The SQL that keeps the tables for this transaction's rows, to run after they are inserted, in its
    transaction. ``spans`` and ``feedback`` are (registered view name, Arrow table) of ``span_log`` and
    ``feedback_log`` rows, either None. Statements that cannot find anything for these rows are left out:
    span-side ones as ``known`` (what the file held before this transaction) says."""
    out: list[str] = []
    span_view = spans[0] if spans is not None else None
    feedback_view = feedback[0] if feedback is not None else None
    carried = False
    if spans is not None:
        table = spans[1]
        if table.column("feedback_attributes").null_count < table.num_rows:
            out.append(
                "INSERT INTO span_feedback_keys SELECT trace_id, span_id, parent_span_id, start_time, received_at, "
                f"feedback_attributes\nFROM {span_view} WHERE feedback_attributes IS NOT NULL"
            )
        if table.column("parent_span_id").null_count:
            out.append(
                f"INSERT INTO trace_roots SELECT trace_id, span_id FROM {span_view} WHERE parent_span_id IS NULL"
            )
        if known.span_ids:
            # a span arrives: the stored records naming its span id alone
            out.append(
                "INSERT INTO feedback_span_targets SELECT f.seq, f.feedback_id, v.trace_id, v.span_id\n"
                f"FROM {span_view} v JOIN feedback_log f ON f.span_id = v.span_id WHERE {_BY_SPAN_ID}"
            )
        # a span carrying a value that stored records name
        carried = known.named(table)
    by_attribute = False
    if feedback is not None:
        # each record's attributes as one row per key, and a row with a NULL key that counts the record
        out.append(f"INSERT INTO feedback_entries {_ENTRIES.format(source=feedback_view)}")
        table = feedback[1]
        trace_id, span_id, key = (table.column(c) for c in ("trace_id", "span_id", "target_key"))
        by_attribute = key.null_count < table.num_rows
        span_ids = bool(pc.any(pc.and_(pc.is_null(trace_id), pc.is_valid(span_id))).as_py())
        if span_ids:
            # the record arrives: every stored span with the id (this transaction's spans included)
            out.append(
                "INSERT INTO feedback_span_targets SELECT f.seq, f.feedback_id, s.trace_id, s.span_id\n"
                f"FROM {feedback_view} f JOIN span_log s ON s.span_id = f.span_id WHERE {_BY_SPAN_ID}"
            )
        known.saw(span_ids, key.combine_chunks(), table.column("target_value").combine_chunks())
    if by_attribute or carried:
        links = _attribute_links(span_view if carried else None, feedback_view if by_attribute else None)
        out.append(f"INSERT INTO feedback_trace_targets {links}")
    return out
