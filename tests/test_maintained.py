"""The tables the writer keeps beside the logs (store/maintained.py): what a span batch may skip, and that every
writer of a file in one process sees the records the others wrote (a skipped statement would lose a target)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_feedback.decode import decode_traces
from otel_feedback.feedback import FeedbackConfig, Limits, parse_batch, to_table
from otel_feedback.store import Store
from otel_feedback.store.maintained import Known, statements

TARGETS = "SELECT feedback_id, trace_id, span_id FROM feedback_targets ORDER BY ALL"


def _spans(*spans: tuple[str, str, str | None, dict[str, str]]) -> pa.Table:
    """span_log rows of (trace id, span id, parent id or None, attributes), decoded as the receivers do."""
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for trace, span, parent, attrs in spans:
        s = scope.spans.add()
        s.trace_id, s.span_id = bytes.fromhex(trace), bytes.fromhex(span)
        if parent:
            s.parent_span_id = bytes.fromhex(parent)
        s.name, s.start_time_unix_nano, s.end_time_unix_nano = "n", 1_000, 2_000
        if attrs.get("failed"):
            s.status.code = 2  # STATUS_CODE_ERROR
        for k, v in attrs.items():
            kv = s.attributes.add()
            kv.key, kv.value.string_value = k, v
    return decode_traces(req).table


def _feedback(*records: dict) -> pa.Table:
    return to_table(parse_batch({"records": list(records)}, channel="test", limits=Limits(), config=FeedbackConfig()))


T1, T2 = "1" * 32, "2" * 32
R1, C1, R2 = "a" * 16, "b" * 16, "c" * 16


def _tables(sql: list[str]) -> list[str]:
    return [s.split()[2] for s in sql]


def test_a_span_batch_that_can_resolve_nothing_costs_no_statement() -> None:
    children = ("v", _spans((T1, C1, R1, {"session.id": "s"})))
    assert statements(children, None, Known()) == []
    # roots are kept whatever the feedback (a record may name their trace later)
    spans = ("v", _spans((T1, R1, None, {"session.id": "s"}), (T1, C1, R1, {})))
    assert _tables(statements(spans, None, Known())) == ["trace_roots"]
    # once records name span ids or the session, each has its statement
    known = Known(span_ids=True)
    known.values["session.id"].add("s")
    assert _tables(statements(spans, None, known)) == [
        "trace_roots",
        "feedback_span_targets",
        "feedback_root_targets",  # the roots, to the stored links of their traces
        "feedback_root_targets",  # the links the session makes, to the roots
        "feedback_trace_targets",
    ]
    known = Known()
    known.values["session.id"].add("other")
    assert _tables(statements(children, None, known)) == []
    # a span with feedback keys of its own is kept apart
    own = ("v", _spans((T1, C1, R1, {"user_feedback": "positive"})))
    assert _tables(statements(own, None, Known())) == ["span_feedback_keys"]
    # a record naming a trace: its entries, and its trace's roots linked; from then on roots of that trace arriving
    # look for such records (roots of other traces, and spans without roots, still cost nothing more)
    trace = ("f", _feedback({"trace_id": T1, "attributes": {"x": 1}}))
    known = Known()
    assert _tables(statements(None, trace, known)) == ["feedback_entries", "feedback_root_targets"]
    assert _tables(statements(spans, None, known)) == ["trace_roots", "feedback_root_targets"]
    assert statements(children, None, known) == []
    other = ("v", _spans((T2, R2, None, {}), (T2, C1, R2, {})))
    assert _tables(statements(other, None, known)) == ["trace_roots"]
    # a record naming a trace and a span needs only its entries
    span = ("f", _feedback({"trace_id": T1, "span_id": C1, "attributes": {"x": 1}}))
    assert _tables(statements(None, span, Known())) == ["feedback_entries"]


def test_every_writer_of_a_file_sees_what_the_others_wrote(tmp_path: Path) -> None:
    """A second Store of a held file has a writer of its own (no journal): a session record written through the
    first, then the session's spans through the second, must still resolve (the two share what they know)."""
    path = tmp_path / "two.duckdb"
    with Store(path) as first, Store(path) as second:
        first.append({"feedback_log": _feedback({"target": {"attribute": "session.id", "value": "s"}, "id": "s-1",
                                                 "attributes": {"user_feedback": "negative"}})})  # fmt: skip
        first.append({"feedback_log": _feedback({"trace_id": T2, "id": "t-2", "attributes": {"x": 1}})})
        assert first.query(TARGETS).rows == []
        second.append({"span_log": _spans((T1, R1, None, {}), (T1, C1, R1, {"session.id": "s"}), (T2, R2, None, {}))})
        assert second.query(TARGETS).rows == [("s-1", T1, R1), ("t-2", T2, R2)]
        assert first.query("SELECT user_feedback FROM spans WHERE span_id = ?", [R1]).rows == [("negative",)]


def test_a_span_id_alone_resolves_in_either_order(store: Store) -> None:
    store.append({"span_log": _spans((T1, R1, None, {}), (T1, C1, R1, {}))})
    store.append({"feedback_log": _feedback({"span_id": C1, "id": "early-span", "attributes": {"x": 1}})})
    store.append({"feedback_log": _feedback({"span_id": R2, "id": "late-span", "attributes": {"x": 2}})})
    store.append({"span_log": _spans((T2, R2, None, {}))})
    assert store.query(TARGETS).rows == [("early-span", T1, C1), ("late-span", T2, R2)]


REBUILT = {
    # each maintained table as a function of the logs (what migration 0006 fills it with)
    "span_feedback_keys": "SELECT trace_id, span_id, parent_span_id, start_time, received_at, feedback_attributes::VARCHAR "
    "FROM span_log WHERE feedback_attributes IS NOT NULL",
    "trace_roots": "SELECT trace_id, span_id FROM span_log WHERE parent_span_id IS NULL",
    "feedback_entries": "SELECT seq, e.key, e.value::VARCHAR FROM (SELECT seq, unnest(list_prepend({'key': NULL::VARCHAR, "
    "'value': NULL::JSON}, map_entries(json_transform(attributes, '\"MAP(VARCHAR, JSON)\"')))) AS e FROM feedback_log)",
    "feedback_trace_targets": "SELECT DISTINCT f.seq, f.feedback_id, s.trace_id FROM feedback_log f JOIN span_log s "
    "ON (f.target_key = 'session.id' AND s.session_id = f.target_value) "
    "OR (f.target_key = 'client_request_id' AND s.client_request_id = f.target_value) "
    "WHERE f.trace_id IS NULL AND f.span_id IS NULL AND s.annotation_carrier IS NOT TRUE",
    "feedback_span_targets": "SELECT DISTINCT f.seq, f.feedback_id, s.trace_id, s.span_id FROM feedback_log f "
    "JOIN span_log s ON s.span_id = f.span_id WHERE f.trace_id IS NULL AND f.span_id IS NOT NULL",
}
REBUILT["feedback_root_targets"] = (
    "SELECT DISTINCT x.seq, x.feedback_id, s.trace_id, s.span_id FROM ("
    "SELECT seq, feedback_id, trace_id FROM feedback_log WHERE trace_id IS NOT NULL AND span_id IS NULL UNION ALL "
    + REBUILT["feedback_trace_targets"].replace("SELECT DISTINCT", "SELECT", 1)
    + ") x JOIN span_log s ON s.trace_id = x.trace_id WHERE s.parent_span_id IS NULL"
)
REBUILT["span_copies"] = (
    "SELECT trace_id, span_id, received_at, status_code, annotation_carrier FROM span_log WHERE (trace_id, span_id) IN "
    "(SELECT trace_id, span_id FROM span_log GROUP BY ALL HAVING count(*) > 1)"
)
REBUILT["feedback_copies"] = (
    "SELECT feedback_id, seq FROM feedback_log WHERE feedback_id IN "
    "(SELECT feedback_id FROM feedback_log GROUP BY ALL HAVING count(*) > 1)"
)
KEPT = {
    "span_copies": "SELECT trace_id, span_id, received_at, status_code, annotation_carrier FROM span_copies",
    "feedback_copies": "SELECT feedback_id, seq FROM feedback_copies",
    "span_feedback_keys": "SELECT trace_id, span_id, parent_span_id, start_time, received_at, "
    "feedback_attributes::VARCHAR FROM span_feedback_keys",
    # the key back to the id's text (an id kept as text has no key)
    "trace_roots": "SELECT coalesce(trace_id, lpad(lower(hex(trace_key)), 32, '0')), span_id FROM trace_roots",
    "feedback_entries": "SELECT seq, key, value::VARCHAR FROM feedback_entries",
    "feedback_trace_targets": "SELECT DISTINCT seq, feedback_id, trace_id FROM feedback_trace_targets",
    "feedback_span_targets": "SELECT DISTINCT seq, feedback_id, trace_id, span_id FROM feedback_span_targets",
    "feedback_root_targets": "SELECT DISTINCT seq, feedback_id, trace_id, span_id FROM feedback_root_targets",
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_kept_tables_equal_their_rebuild_from_the_logs(tmp_path: Path, seed: int) -> None:
    """Spans and feedback of every kind in a random order, in small and large batches, with retried spans and
    records: each kept table holds what rebuilding it from the logs gives (as a multiset where every copy counts,
    as a set for the links, which may be made twice)."""
    rng = random.Random(seed)
    traces = [f"{rng.getrandbits(128):032x}" for _ in range(12)]
    spans, records = [], []
    for t, trace in enumerate(traces):
        root = f"{rng.getrandbits(64):016x}"
        session = {"session.id": f"s{t % 3}"} if t % 2 else {}
        spans.append((trace, root, None, {**session, "client_request_id": f"r{t}"}))
        for _ in range(rng.randint(0, 3)):
            own = {"user_feedback": "negative"} if rng.random() < 0.3 else {}
            failed = {"failed": "yes"} if rng.random() < 0.3 else {}
            spans.append((trace, f"{rng.getrandbits(64):016x}", root, {**session, **own, **failed}))
    for i in range(30):
        trace, span, _, _ = rng.choice(spans)
        target = rng.choice(
            [
                {"trace_id": trace},
                {"trace_id": trace, "span_id": span},
                {"span_id": span},
                {"target": {"attribute": "session.id", "value": f"s{rng.randrange(3)}"}},
                {"target": {"attribute": "client_request_id", "value": f"r{rng.randrange(12)}"}},
            ]
        )
        records.append({**target, "id": f"rec-{i % 25}", "attributes": {"user_feedback_rating": 1 + i % 5}})
    jobs = [{"span_log": _spans(s)} for s in spans] + [{"feedback_log": _feedback(r)} for r in records]
    jobs += [{"span_log": _spans(*rng.sample(spans, 5))}]  # a retry that stores some spans again
    twice = rng.choice(spans)
    jobs += [{"span_log": _spans(twice, rng.choice(spans), twice)}]  # a request that carries a span twice
    rng.shuffle(jobs)
    with Store(tmp_path / "kept.duckdb") as store:
        while jobs:  # a few at a time, each few in a transaction of its own (flush applies them)
            futures = [store.submit(jobs.pop()) for _ in range(min(len(jobs), rng.randint(1, 4)))]
            for f in futures:
                f.result(30)
            assert store.flush()
        for table, rebuilt in REBUILT.items():
            kept = sorted(store.query(KEPT[table]).rows, key=repr)
            assert kept == sorted(store.query(rebuilt).rows, key=repr), table
        assert store.query("SELECT count(*) FROM trace_roots").rows[0][0] >= len(traces)
        # copies of a span never share a received_at (the writer moves the later ones on), and the views' first
        # copies are those a search of the whole log finds (the earliest received_at, then the lowest rowid)
        ties = "SELECT trace_id, span_id, received_at FROM span_log GROUP BY ALL HAVING count(*) > 1"
        assert store.query(ties).rows == []
        first = sorted(store.query("SELECT trace_id, span_id, received_at FROM span_rows").rows)
        assert first == sorted(store.query(FIRST_COPIES).rows)
        assert len(first) == store.query("SELECT count(DISTINCT (trace_id, span_id)) FROM span_log").rows[0][0]
        assert sorted(store.query("SELECT seq FROM feedback").rows) == sorted(
            store.query("SELECT min(seq) FROM feedback_log GROUP BY feedback_id").rows
        )
        assert store.query("SELECT count(*) FROM span_copies").rows[0][0] >= 2  # the workload has repeats
        # traces count each span once, from the copies kept: as counting distinct span ids in the log does
        counts = "SELECT trace_id, span_count, error_count, status_code = 'ERROR' FROM traces"
        assert sorted(store.query(counts).rows) == sorted(store.query(DISTINCT_COUNTS).rows)
        assert store.query("SELECT count(*) FROM traces WHERE error_count > 0").rows[0][0] > 0


DISTINCT_COUNTS = """
SELECT trace_id, count(DISTINCT span_id), count(DISTINCT span_id) FILTER (WHERE status_code = 'ERROR'),
       count(DISTINCT span_id) FILTER (WHERE status_code = 'ERROR') > 0
FROM span_log WHERE annotation_carrier IS NOT TRUE GROUP BY trace_id
"""


FIRST_COPIES = """
SELECT s.trace_id, s.span_id, s.received_at FROM span_log s
ANTI JOIN span_log e ON e.trace_id = s.trace_id AND e.span_id = s.span_id
    AND (e.received_at < s.received_at OR (e.received_at = s.received_at AND e.rowid < s.rowid))
"""


def test_a_trace_named_before_a_restart_gets_its_root_after_it(tmp_path: Path) -> None:
    """The filter of the trace ids that records name is built again at open: a root arriving after a restart still
    finds the record that named its trace before it."""
    path = tmp_path / "restart.duckdb"
    with Store(path) as store:
        store.append({"feedback_log": _feedback({"trace_id": T2, "id": "early", "attributes": {"x": 1}})})
        store.append({"span_log": _spans((T1, R1, None, {}))})
    with Store(path) as store:
        store.append({"span_log": _spans((T2, R2, None, {}), (T2, C1, R2, {}))})
        assert store.query(TARGETS).rows == [("early", T2, R2)]
        assert store.query("SELECT count(*) FROM feedback_root_targets").rows == [(1,)]


def test_a_trace_id_kept_as_text_is_still_found(store: Store) -> None:
    """trace_roots keys a trace by its id's 128 bits when the id is 32 lower-case hex digits (all OTLP sends); any
    other id a client wrote is kept as text and found by it, and an id in another case is another trace, as in the
    logs."""
    odd = "A" * 32
    spans = _spans((T1, R1, None, {"session.id": "s"}), (T2, R2, None, {"session.id": "s"}))
    spans = spans.set_column(spans.schema.get_field_index("trace_id"), "trace_id", pa.array([odd, T2]))
    store.append({"span_log": spans})
    store.append({"feedback_log": _feedback({"target": {"attribute": "session.id", "value": "s"}, "id": "sess",
                                             "attributes": {"x": 1}})})  # fmt: skip
    store.append({"feedback_log": _feedback({"trace_id": "a" * 32, "id": "lower", "attributes": {"x": 2}})})
    store.append({"feedback_log": _feedback({"trace_id": T2, "id": "t2", "attributes": {"x": 3}})})
    assert store.query(TARGETS).rows == [("sess", T2, R2), ("sess", odd, R1), ("t2", T2, R2)]
    assert store.query("SELECT trace_key IS NULL, trace_id FROM trace_roots ORDER BY ALL").rows == [
        (False, None),
        (True, odd),
    ]
