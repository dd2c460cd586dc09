"""Order-freedom of the feedback log, as a property.

Hypothesis draws a few traces (root + children, some in a session, each root with a
``client_request_id``) and feedback records aimed at them in every way a target can be named
(trace + span, trace only -> root, span id only, ``client_request_id``, ``session.id``), with
deletes (``null``), several keys, timestamps drawn from a small pool (so ties and out-of-order
times are common) given as ``timestamp`` / ``user_feedback_timestamp`` / epoch seconds, and
duplicates by feedback id. The same scenario is then sent to one real server in three orders
(spans first, feedback first, a drawn permutation), each order in its own namespace of fresh
trace / span ids, through the real ways in: OTLP traces (gRPC and HTTP protobuf, carrying
feedback span events), ``PATCH /v1/traces/...``, ``POST /v1/feedback`` and the gRPC
``FeedbackService/BatchPatch`` (where an empty ``AnyValue`` is the ``null`` that deletes).

For every order the ``spans`` view (merged attributes, the ``user_feedback*`` columns,
``feedback_count``, ``last_feedback_time``) must equal a model computed here from the documented
rules: per key the record with the latest feedback time wins, ties go to the later arrival (first
copy of a feedback id counts, its ``seq``), ``null`` removes the key. Where the model says the
outcome does not depend on arrival (no ties), all orders must show exactly the same rows.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otel_feedback._pb import feedback_pb2
from otel_feedback.server import Server

from .conftest import make_server, sql

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T0_S = int(T0.timestamp())
SPAN_START_NS = (T0_S - 3600) * 1_000_000_000

# the test's own reading of the documented thumb normalisation
THUMBS = {"positive": "positive", "thumbs_up": "positive", "👍": "positive", "up": "positive",
          "negative": "negative", "thumbs_down": "negative", "👎": "negative", "-1": "negative",
          "neutral": "neutral"}  # fmt: skip
# what the app itself put on its spans before any feedback
BASE = {
    "user_feedback": st.sampled_from(["neutral", "thumbs_up"]),
    "user_feedback_rating": st.integers(1, 5),
    "k0": st.text(max_size=5),
    "input.value": st.text(max_size=5),
}
KEYS = ("user_feedback", "user_feedback_rating", "user_feedback_category", "user_feedback_comment", "k0", "k1")


# -- scenario -----------------------------------------------------------------------------------------


@dataclass
class Rec:
    idx: int
    target: tuple[Any, ...]  # ("span", t, s) | ("trace", t) | ("span_only", t, s) | ("request", t) | ("session",)
    attrs: dict[str, Any]
    k: int  # feedback time: T0 + k seconds
    time_as: str  # "timestamp" | "timestamp_epoch" | "attr" | "attr_epoch"
    way: str  # "patch" | "batch" | "event"
    with_id: bool
    copies: int  # 1 + duplicates (same id, same content)
    event_name: str = "feedback"
    carrier: tuple[int, int] | None = None  # (t, s) of the span carrying an "event" record
    same_id_as: int | None = None  # a retry that reuses another record's id with other content

    @property
    def key(self) -> int:
        """Which records are one record by id: the first to arrive counts, later ones change nothing."""
        return self.idx if self.same_id_as is None else self.same_id_as


@dataclass
class Scenario:
    traces: list[dict[str, Any]]  # {"children": n, "in_session": bool, "base": [attrs per span]}
    recs: list[Rec]
    span_copies: dict[tuple[int, int], int]
    permutation: list[int] = field(default_factory=list)

    def spans(self) -> list[tuple[int, int]]:
        return [(t, s) for t, tr in enumerate(self.traces) for s in range(1 + tr["children"])]


def _value(key: str, allow_null: bool) -> st.SearchStrategy[Any]:
    base: st.SearchStrategy[Any]
    if key == "user_feedback":
        base = st.sampled_from(sorted(THUMBS))
    elif key == "user_feedback_rating":
        base = st.integers(1, 5) | st.sampled_from([1.5, 4.25])
    elif key == "user_feedback_category":
        base = st.sampled_from(["incorrect", "off-topic", "great"])
    elif key == "user_feedback_comment":
        base = st.text(max_size=12)
    elif key == "k0":
        base = st.text(max_size=6) | st.integers(-1000, 1000) | st.booleans() | st.floats(-1e6, 1e6, width=32)
    else:
        base = st.lists(st.sampled_from(["a", "b", "ü"]), max_size=3)
    return (base | st.none()) if allow_null else base


@st.composite
def _attrs(draw: st.DrawFn, allow_null: bool) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    return {k: draw(_value(k, allow_null)) for k in keys}


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    traces = []
    for _ in range(draw(st.integers(1, 2))):
        children = draw(st.integers(0, 2))
        base = [draw(st.fixed_dictionaries({}, optional=BASE)) for _ in range(1 + children)]
        traces.append({"children": children, "in_session": draw(st.booleans()), "base": base})
    sc = Scenario(traces, [], {})
    spans = sc.spans()
    for t, s in spans:
        sc.span_copies[(t, s)] = draw(st.sampled_from([1, 1, 1, 2]))
    used_event_keys: set[tuple[tuple[int, int], str, int]] = set()
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["span", "trace", "span_only", "request", "session"]))
        if kind in ("span", "span_only"):
            target: tuple[Any, ...] = (kind, *draw(st.sampled_from(spans)))
        elif kind in ("trace", "request"):
            target = (kind, draw(st.integers(0, len(traces) - 1)))
        else:
            target = ("session",)
        ways = ["batch", "grpc"] + (["patch", "event"] if kind in ("span", "trace") else [])
        way = draw(st.sampled_from(ways))
        attrs = draw(_attrs(allow_null=way != "event"))
        k = draw(st.integers(0, 5))
        time_as = draw(st.sampled_from(["timestamp", "timestamp_epoch", "attr", "attr_epoch"]))
        rec = Rec(len(sc.recs), target, attrs, k, time_as, way, draw(st.booleans()), 1)
        if way == "event":
            # a span event is timed by the event itself, or by user_feedback_timestamp
            rec.time_as = draw(st.sampled_from(["event", "attr", "attr_epoch"]))
            rec.event_name = draw(st.sampled_from(["feedback", "user_feedback"]))
            rec.carrier = draw(st.sampled_from(spans))
            key = (rec.carrier, rec.event_name, k)
            if key in used_event_keys:  # two id-less events of one name at one instant on one span are one event
                rec.with_id = True
            used_event_keys.add(key)
        else:
            rec.copies = 1 + draw(st.sampled_from([0, 0, 1, 2]))
            if rec.copies > 1:
                rec.with_id = True
        sc.recs.append(rec)
        if rec.way != "event" and draw(st.integers(0, 5)) == 0:
            # same id, other content (a buggy client): whichever arrives first is the record
            other = Rec(len(sc.recs), target, draw(_attrs(allow_null=True)), draw(st.integers(0, 5)), rec.time_as,
                        way, True, 1, same_id_as=rec.idx)  # fmt: skip
            rec.with_id = True
            sc.recs.append(other)
    n_items = len(_items(sc))
    sc.permutation = draw(st.permutations(range(n_items)))
    return sc


def _items(sc: Scenario) -> list[tuple[Any, ...]]:
    """What gets sent: ("span", t, s) per copy, ("rec", i) per copy of each non-event record."""
    items: list[tuple[Any, ...]] = []
    for ts, n in sc.span_copies.items():
        items += [("span", *ts)] * n
    for r in sc.recs:
        if r.way != "event":
            items += [("rec", r.idx)] * r.copies
    return items


def _orders(sc: Scenario) -> dict[str, list[tuple[Any, ...]]]:
    items = _items(sc)
    spans = [it for it in items if it[0] == "span"]
    recs = [it for it in items if it[0] == "rec"]
    return {"spans_first": spans + recs, "feedback_first": recs + spans, "shuffled": [items[i] for i in sc.permutation]}


# -- one namespace: fresh ids, requests -----------------------------------------------------------------


@dataclass
class Namespace:
    sc: Scenario
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    trace_ids: list[str] = field(default_factory=list)
    span_ids: dict[tuple[int, int], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for t, tr in enumerate(self.sc.traces):
            self.trace_ids.append(secrets.token_hex(16))
            for s in range(1 + tr["children"]):
                self.span_ids[(t, s)] = secrets.token_hex(8)

    @property
    def session(self) -> str:
        return f"sess-{self.tag}"

    def request_id(self, t: int) -> str:
        return f"req-{self.tag}-{t}"

    def rec_id(self, r: Rec) -> str | None:
        return f"fb-{self.tag}-{r.key}" if r.with_id else None

    def span_attrs(self, t: int, s: int) -> dict[str, Any]:
        attrs = dict(self.sc.traces[t]["base"][s])
        if s == 0:
            attrs["client_request_id"] = self.request_id(t)
            if self.sc.traces[t]["in_session"]:
                attrs["session.id"] = self.session
        return attrs


def _iso(k: int) -> str:
    return (T0 + timedelta(seconds=k)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _patch_attrs(r: Rec) -> dict[str, Any]:
    attrs = dict(r.attrs)
    if r.time_as == "attr":
        attrs["user_feedback_timestamp"] = _iso(r.k)
    elif r.time_as == "attr_epoch":
        attrs["user_feedback_timestamp"] = T0_S + r.k
    return attrs


def _body(ns: Namespace, r: Rec, *, in_path: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"attributes": _patch_attrs(r)}
    if r.time_as == "timestamp":
        body["timestamp"] = _iso(r.k)
    elif r.time_as == "timestamp_epoch":
        body["timestamp"] = T0_S + r.k
    if (rid := ns.rec_id(r)) is not None:
        body["id"] = rid
    if in_path:
        return body
    kind = r.target[0]
    if kind == "span":
        body |= {"trace_id": ns.trace_ids[r.target[1]], "span_id": ns.span_ids[r.target[1:]]}
    elif kind == "trace":
        body["trace_id"] = ns.trace_ids[r.target[1]]
    elif kind == "span_only":
        body["span_id"] = ns.span_ids[r.target[1:]]
    elif kind == "request":
        body["target"] = {"attribute": "client_request_id", "value": ns.request_id(r.target[1])}
    else:
        body["target"] = {"attribute": "session.id", "value": ns.session}
    return body


def _any(v: Any) -> AnyValue:
    if v is None:  # FeedbackService: a key with an empty value removes it
        return AnyValue()
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[_any(x) for x in v]))
    raise TypeError(v)


def _kvs(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any(v)) for k, v in attrs.items()]


def _span(ns: Namespace, t: int, s: int) -> Span:
    span = Span(
        trace_id=bytes.fromhex(ns.trace_ids[t]),
        span_id=bytes.fromhex(ns.span_ids[(t, s)]),
        parent_span_id=b"" if s == 0 else bytes.fromhex(ns.span_ids[(t, 0)]),
        name="answer" if s == 0 else f"step-{s}",
        start_time_unix_nano=SPAN_START_NS + s,
        end_time_unix_nano=SPAN_START_NS + 1_000_000 + s,
        attributes=_kvs(ns.span_attrs(t, s)),
    )
    for r in ns.sc.recs:
        if r.way != "event" or r.carrier != (t, s):
            continue
        attrs = _patch_attrs(r)
        if (rid := ns.rec_id(r)) is not None:
            attrs["feedback.id"] = rid
        target_ts = r.target[1:] if r.target[0] == "span" else (r.target[1], 0)
        if r.target[0] == "trace" and r.carrier != (r.target[1], 0):
            attrs["feedback.trace_id"] = ns.trace_ids[r.target[1]]
        elif r.target[0] == "span" and r.carrier != target_ts:
            attrs["feedback.trace_id"] = ns.trace_ids[target_ts[0]]
            attrs["feedback.span_id"] = ns.span_ids[target_ts]
        span.events.add(time_unix_nano=(T0_S + r.k) * 1_000_000_000, name=r.event_name, attributes=_kvs(attrs))
    return span


def _patch_request(ns: Namespace, r: Rec) -> feedback_pb2.PatchRequest:
    """The record as FeedbackService takes it (one of a ``BatchPatch``)."""
    kind, target = r.target[0], feedback_pb2.Target()
    if kind in ("span", "trace"):
        target.trace_id = bytes.fromhex(ns.trace_ids[r.target[1]])
    if kind in ("span", "span_only"):
        target.span_id = bytes.fromhex(ns.span_ids[r.target[1:]])
    if kind == "request":
        target.attribute_key, target.attribute_value = "client_request_id", ns.request_id(r.target[1])
    elif kind == "session":
        target.attribute_key, target.attribute_value = "session.id", ns.session
    req = feedback_pb2.PatchRequest(id=ns.rec_id(r) or "", target=target, attributes=_kvs(_patch_attrs(r)))
    if r.time_as.startswith("timestamp"):
        req.time_unix_nano = (T0_S + r.k) * 1_000_000_000
    return req


class Sender:
    """Sends runs of items through the real ways in; consecutive spans go in one export, consecutive
    batch records in one ``POST /v1/feedback``, consecutive grpc records in one ``BatchPatch``."""

    def __init__(self, server: Server, http: httpx.Client, channel: grpc.Channel) -> None:
        self.server = server
        self.http = http
        self.export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=ExportTraceServiceRequest.SerializeToString,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        self.batch_patch = channel.unary_unary(
            "/otel_feedback.v1.FeedbackService/BatchPatch",
            request_serializer=feedback_pb2.BatchPatchRequest.SerializeToString,
            response_deserializer=feedback_pb2.BatchPatchResponse.FromString,
        )
        self.runs = 0

    def send(self, ns: Namespace, items: list[tuple[Any, ...]]) -> None:
        run: list[tuple[Any, ...]] = []
        for it in items:
            if run and self._kind(ns, run[0]) != self._kind(ns, it):
                self._flush(ns, run)
                run = []
            run.append(it)
            if self._kind(ns, it) == "patch":
                self._flush(ns, run)
                run = []
        if run:
            self._flush(ns, run)

    @staticmethod
    def _kind(ns: Namespace, it: tuple[Any, ...]) -> str:
        return "span" if it[0] == "span" else ns.sc.recs[it[1]].way

    def _flush(self, ns: Namespace, run: list[tuple[Any, ...]]) -> None:
        self.runs += 1
        kind = self._kind(ns, run[0])
        if kind == "span":
            req = ExportTraceServiceRequest(
                resource_spans=[
                    ResourceSpans(
                        resource=Resource(attributes=_kvs({"service.name": "order-test"})),
                        scope_spans=[ScopeSpans(spans=[_span(ns, it[1], it[2]) for it in run])],
                    )
                ]
            )
            if self.runs % 2:
                resp = self.export(req, timeout=30)
                assert not resp.partial_success.rejected_spans, resp
            else:
                r = self.http.post(
                    "/v1/traces", content=req.SerializeToString(), headers={"content-type": "application/x-protobuf"}
                )
                assert r.status_code == 200, r.text
                assert not ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans
        elif kind == "patch":
            [(_, i)] = run
            rec = ns.sc.recs[i]
            tid = ns.trace_ids[rec.target[1]]
            url = (
                f"/v1/traces/{tid}"
                if rec.target[0] == "trace"
                else f"/v1/traces/{tid}/spans/{ns.span_ids[rec.target[1:]]}"
            )
            r = self.http.patch(url, json=_body(ns, rec, in_path=True))
            assert r.status_code == 200, r.text
        elif kind == "grpc":
            patches = [_patch_request(ns, ns.sc.recs[it[1]]) for it in run]
            resp = self.batch_patch(feedback_pb2.BatchPatchRequest(patches=patches), timeout=30)
            assert len(resp.ids) == len(run)
        else:
            r = self.http.post(
                "/v1/feedback", json={"records": [_body(ns, ns.sc.recs[it[1]], in_path=False) for it in run]}
            )
            assert r.status_code == 200, r.text
            assert r.json()["count"] == len(run)


# -- the model ---------------------------------------------------------------------------------------------


def _arrivals(sc: Scenario, items: list[tuple[Any, ...]]) -> list[Rec]:
    """Unique records in arrival order (the first copy of an id counts), as the server sees them."""
    seen: set[int] = set()  # Rec.key
    out: list[Rec] = []
    # consecutive spans travel in one export; within it, spans in order and each span's events in order
    for it in items:
        found = [sc.recs[it[1]]] if it[0] == "rec" else [r for r in sc.recs if r.way == "event" and r.carrier == it[1:]]
        for r in found:
            if r.key in seen:
                continue
            seen.add(r.key)
            out.append(r)
    return out


def _targets(sc: Scenario, r: Rec) -> list[tuple[int, int]]:
    kind = r.target[0]
    if kind in ("span", "span_only"):
        return [r.target[1:]]
    if kind in ("trace", "request"):
        return [(r.target[1], 0)]
    return [(t, 0) for t, tr in enumerate(sc.traces) if tr["in_session"]]


def _normalise(key: str, value: Any) -> Any:
    return THUMBS[value] if key == "user_feedback" and value is not None else value


@dataclass
class Expected:
    attributes: dict[str, Any]
    count: int
    last: datetime | None
    tie: bool  # the outcome depends on arrival order


def model(ns: Namespace, items: list[tuple[Any, ...]]) -> dict[tuple[int, int], Expected]:
    sc = ns.sc
    arrivals = _arrivals(sc, items)
    out = {}
    for ts in sc.spans():
        mine = [(seq, r) for seq, r in enumerate(arrivals) if ts in _targets(sc, r)]
        attrs = ns.span_attrs(*ts)
        tie = False
        for key in {k for _, r in mine for k in _patch_attrs(r)}:
            # (feedback time, arrival) orders the setters of a key; the last one wins
            setters = [(r.k, seq, _normalise(key, _patch_attrs(r)[key])) for seq, r in mine if key in _patch_attrs(r)]
            k_top, _, value = max(setters, key=lambda x: (x[0], x[1]))
            tie = tie or len({json.dumps(v) for k, _, v in setters if k == k_top}) > 1
            if value is None:
                attrs.pop(key, None)
            else:
                attrs[key] = value
        last = max((r.k for _, r in mine), default=None)
        out[ts] = Expected(
            attrs, len(mine), None if last is None else (T0 + timedelta(seconds=last)).replace(tzinfo=None), tie
        )
    return out


def _columns(e: Expected) -> dict[str, Any]:
    a = e.attributes
    rating = a.get("user_feedback_rating")
    ts = a.get("user_feedback_timestamp")
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts).replace(tzinfo=None)
    elif isinstance(ts, int):
        ts = datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)
    return {
        "attributes": a,
        "user_feedback": None if a.get("user_feedback") is None else str(a["user_feedback"]),
        "user_feedback_rating": None if rating is None else float(rating),
        "user_feedback_category": a.get("user_feedback_category"),
        "user_feedback_comment": a.get("user_feedback_comment"),
        "user_feedback_timestamp": ts,
        "feedback_count": e.count,
        "last_feedback_time": e.last,
    }


def observed(server: Server, ns: Namespace) -> dict[tuple[int, int], dict[str, Any]]:
    rows = sql(
        server,
        "SELECT span_id, attributes, user_feedback, user_feedback_rating, user_feedback_category, "
        "user_feedback_comment, user_feedback_timestamp, feedback_count, last_feedback_time "
        "FROM spans WHERE trace_id IN (SELECT unnest($t::VARCHAR[]))",
        {"t": ns.trace_ids},
    )
    by_span = {sid: ts for ts, sid in ns.span_ids.items()}
    out = {}
    for row in rows:
        ts = by_span[row.pop("span_id")]
        row["attributes"] = json.loads(row["attributes"])
        out[ts] = row
    return out


def _orphans(server: Server, ns: Namespace) -> int:
    [row] = sql(
        server,
        "SELECT count(*) AS n FROM orphan_feedback WHERE trace_id IN (SELECT unnest($t::VARCHAR[])) "
        "OR span_id IN (SELECT unnest($s::VARCHAR[])) OR target_value IN (SELECT unnest($v::VARCHAR[]))",
        {
            "t": ns.trace_ids,
            "s": list(ns.span_ids.values()),
            "v": [ns.session, *(ns.request_id(t) for t in range(len(ns.sc.traces)))],
        },
    )
    return int(row["n"])


# -- the test --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def order_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, httpx.Client, grpc.Channel]]:
    srv = make_server(tmp_path_factory.mktemp("order") / "order.duckdb")
    with httpx.Client(base_url=srv.http_url, timeout=30) as http, grpc.insecure_channel(srv.grpc_target) as ch:
        yield srv, http, ch
    srv.stop()


def same(a: Any, b: Any) -> bool:
    """Equality that keeps JSON types apart (``True`` is not ``1``), numbers compared by value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@dataclass
class Outcome:
    ns: Namespace
    items: list[tuple[Any, ...]]
    got: dict[tuple[int, int], dict[str, Any]]
    orphans_before_spans: int | None
    orphans_after: int


def _run_order(
    server: Server, http: httpx.Client, channel: grpc.Channel, sc: Scenario, name: str, items: list[tuple[Any, ...]]
) -> Outcome:
    """Send one order into a fresh namespace, one request at a time (each acknowledged before the next)."""
    ns = Namespace(sc)
    sender = Sender(server, http, channel)
    before = None
    if name == "feedback_first":
        sender.send(ns, [it for it in items if it[0] == "rec"])
        before = _orphans(server, ns)
        sender.send(ns, [it for it in items if it[0] == "span"])
    else:
        sender.send(ns, items)
    return Outcome(ns, items, observed(server, ns), before, _orphans(server, ns))


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_merged_spans_view_is_order_free_and_follows_the_rules(order_server, sc: Scenario) -> None:
    server, http, channel = order_server
    # the orders go to disjoint namespaces, so they may run side by side (sharing group commits)
    with ThreadPoolExecutor(3) as pool:
        futures = {
            name: pool.submit(_run_order, server, http, channel, sc, name, items) for name, items in _orders(sc).items()
        }
        outcomes = {name: f.result(timeout=300) for name, f in futures.items()}
    views = {}
    any_tie = any(r.same_id_as is not None for r in sc.recs)
    no_session = not any(tr["in_session"] for tr in sc.traces)
    lost = len({r.key for r in sc.recs if r.target == ("session",)}) if no_session else 0
    for name, out in outcomes.items():
        if out.orphans_before_spans is not None:
            unique_http = len({r.key for r in sc.recs if r.way != "event"})
            assert out.orphans_before_spans == unique_http, "feedback that came before its spans is kept as orphans"
        assert out.orphans_after == lost, "only feedback whose target never came stays orphaned"
        expected = model(out.ns, out.items)
        got = out.got
        assert set(got) == set(expected), "every span shows once"
        for ts, e in expected.items():
            want = _columns(e)
            have = got[ts]
            assert have.keys() == want.keys()
            for col in want:
                assert same(have[col], want[col]), (name, ts, col, have[col], want[col])
            any_tie = any_tie or e.tie
        for row in got.values():  # ids differ per namespace; the rest must not
            for key in ("client_request_id", "session.id"):
                row["attributes"].pop(key, None)
        views[name] = got
    if not any_tie:
        first, *rest = views.values()
        for other in rest:
            assert same(other, first)
