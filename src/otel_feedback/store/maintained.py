"""Tables the writer keeps beside the logs, in the transaction that appends the rows they follow from, so that
reads of the current feedback state need not search ``span_log``. Migration ``0006_maintained`` (:mod:`.schema`)
fills them from the rows a file already holds. Each is a function of the logs: rebuilding one from them (as the
migration does) gives the same answer.

**The spans carrying feedback keys of their own** (``span_feedback_keys``: trace_id, span_id, parent_span_id,
start_time, received_at, feedback_attributes): every stored copy of a span whose ``feedback_attributes`` (its
``user_feedback*`` keys, derived at decode) is not NULL: well under 1 % of spans. ``spans`` and ``span_feedback``
read them here instead of looking for them among every span.

**The spans feedback names other than by trace and span id.** A feedback record names its target one of four ways: a trace and a span id (the span itself), a trace id
alone (its root span or spans), a span id alone (every stored span with that id: Phoenix's span
annotations), or an attribute value (``session.id``, ``client_request_id``: the root spans of every trace
carrying it, annotation carrier spans aside). Until session 9 the ``feedback_targets`` view resolved the
last three on every read, each with a scan of ``span_log``; a point lookup in ``spans`` paid for three such
scans whether or not any such feedback existed (with random trace ids, ~10 ms each at a million spans).

Now the writer resolves them in the transaction that brings either side, so the view reads two small
tables. Rows may come before their spans or after; both orders land here:

- ``feedback_trace_targets`` (seq, feedback_id, trace_id): a record that names a trace's roots: a trace id
  alone, or an attribute value carried by that trace. Links are added when the record arrives (for the
  traces stored by then) and when a span carrying the value arrives (for records stored by then);
- ``feedback_span_targets`` (seq, feedback_id, trace_id, span_id): the spans resolved: the roots of every
  trace link (when the link is made, the roots stored by then; when a root arrives, the links made by then),
  and the spans with a named span id (either side arriving second).

A pair can be found by both sides in one transaction (a record and its span arriving together), so rows
may repeat; the view counts each (record, span) once. ``seq`` is the record's own row in ``feedback_log``:
a client's retry of a record (same feedback id) resolves again under its own seq, and the view keeps the
targets of the first copy only, as it keeps that copy's attributes.

"""

from __future__ import annotations

import threading

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..model import TARGET_KEYS

_BY_ATTRIBUTE = "f.trace_id IS NULL AND f.span_id IS NULL"
_BY_SPAN_ID = "f.trace_id IS NULL AND f.span_id IS NOT NULL"


def _links(spans: str | None, feedback: str | None, trace_level: bool, by_attribute: bool) -> str:
    """SELECT (seq, feedback_id, trace_id) of the trace links this transaction's rows make, old links
    excluded (their roots were resolved when they were made or as the roots arrived)."""
    parts = []
    if feedback is not None and trace_level:
        parts.append(
            f"SELECT seq, feedback_id, trace_id FROM {feedback} WHERE trace_id IS NOT NULL AND span_id IS NULL"
        )
    if feedback is not None and by_attribute:
        for key, column in TARGET_KEYS.items():
            # the record arrives: every stored trace carrying the value (this transaction's spans included)
            parts.append(
                f"SELECT f.seq, f.feedback_id, s.trace_id FROM {feedback} f JOIN span_log s ON s.{column} = "
                f"f.target_value WHERE f.target_key = '{key}' AND {_BY_ATTRIBUTE} AND s.annotation_carrier IS NOT TRUE"
            )
    if spans is not None:
        for key, column in TARGET_KEYS.items():
            # a span carrying the value arrives: every stored record naming it (this transaction's included)
            parts.append(
                f"SELECT f.seq, f.feedback_id, v.trace_id FROM {spans} v JOIN feedback_log f ON f.target_value = "
                f"v.{column} WHERE f.target_key = '{key}' AND {_BY_ATTRIBUTE} AND v.annotation_carrier IS NOT TRUE"
            )
    union = "\n    UNION ".join(parts)
    return f"SELECT * FROM (\n    {union}\n) EXCEPT SELECT seq, feedback_id, trace_id FROM feedback_trace_targets"


class Known:
    """What the file's feedback holds that decides which of these statements a span batch needs, so that a batch
    that can resolve nothing costs nothing (each statement costs ~1.5 ms however little it finds, ~9 ms a
    commit for all of them). It only grows, as the logs do; one per database instance, loaded at open, kept by
    :func:`statements` as feedback arrives (a transaction that then fails leaves it larger than the file: a
    statement more, never one less)."""

    def __init__(self, trace_links: bool = False, span_ids: bool = False) -> None:
        self.trace_links = trace_links
        """Whether any record names a trace's roots (a trace id alone, or an attribute value)."""
        self.span_ids = span_ids
        """Whether any record names a span id alone."""
        self.values: dict[str, set[str]] = {key: set() for key in TARGET_KEYS}
        """The attribute values records name, by key."""
        self._arrays: dict[str, pa.Array] | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection) -> Known:
        rows = con.execute(
            "SELECT EXISTS (FROM feedback_log WHERE (trace_id IS NOT NULL AND span_id IS NULL) OR target_key IS NOT "
            "NULL), EXISTS (FROM feedback_log WHERE trace_id IS NULL AND span_id IS NOT NULL)"
        ).fetchall()
        known = cls(bool(rows[0][0]), bool(rows[0][1]))
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

    def saw(self, trace_level: bool, span_ids: bool, keys: pa.Array, values: pa.Array) -> None:
        with self._lock:
            self.trace_links = self.trace_links or trace_level or keys.null_count < len(keys)
            self.span_ids = self.span_ids or span_ids
            if keys.null_count == len(keys):
                return
            for key, value in zip(keys.to_pylist(), values.to_pylist(), strict=True):
                if key is not None and value is not None and value not in self.values.setdefault(key, set()):
                    self.values[key].add(value)
                    self._arrays = None


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
        if known.trace_links:
            # a root arrives: the trace links made before this transaction (the links this one makes come below)
            out.append(
                "INSERT INTO feedback_span_targets SELECT t.seq, t.feedback_id, v.trace_id, v.span_id\n"
                f"FROM {span_view} v JOIN feedback_trace_targets t ON t.trace_id = v.trace_id "
                "WHERE v.parent_span_id IS NULL"
            )
        if known.span_ids:
            # a span arrives: the stored records naming its span id alone
            out.append(
                "INSERT INTO feedback_span_targets SELECT f.seq, f.feedback_id, v.trace_id, v.span_id\n"
                f"FROM {span_view} v JOIN feedback_log f ON f.span_id = v.span_id WHERE {_BY_SPAN_ID}"
            )
        # a span carrying a value that stored records name: the links to its trace (made below)
        carried = known.named(table)
    trace_level = by_attribute = False
    if feedback is not None:
        table = feedback[1]
        trace_id, span_id, key = (table.column(c) for c in ("trace_id", "span_id", "target_key"))
        trace_level = bool(pc.any(pc.and_(pc.is_valid(trace_id), pc.is_null(span_id))).as_py())
        by_attribute = key.null_count < table.num_rows
        span_ids = bool(pc.any(pc.and_(pc.is_null(trace_id), pc.is_valid(span_id))).as_py())
        if span_ids:
            # the record arrives: every stored span with the id (this transaction's spans included)
            out.append(
                "INSERT INTO feedback_span_targets SELECT f.seq, f.feedback_id, s.trace_id, s.span_id\n"
                f"FROM {feedback_view} f JOIN span_log s ON s.span_id = f.span_id WHERE {_BY_SPAN_ID}"
            )
        known.saw(trace_level, span_ids, key.combine_chunks(), table.column("target_value").combine_chunks())
    if trace_level or by_attribute or carried:
        links = _links(span_view if carried else None, feedback_view, trace_level, by_attribute)
        # the new links' roots stored by now (this transaction's included), then the links themselves
        out.append(
            "INSERT INTO feedback_span_targets SELECT DISTINCT n.seq, n.feedback_id, s.trace_id, s.span_id\n"
            f"FROM span_log s JOIN ({links}) n ON s.trace_id = n.trace_id WHERE s.parent_span_id IS NULL"
        )
        out.append(f"INSERT INTO feedback_trace_targets {links}")
    return out
