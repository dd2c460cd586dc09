"""The compiled trace decoder (``_otlp_fast.c``) against the Python one, which is the reference.

For any request, ``decode_traces_bytes`` either declines (None) or returns exactly the table
``decode_traces`` gives, byte for byte in every column, JSON text included. Hypothesis builds the requests
(every AnyValue type, nesting, Unicode and control characters, doubles of every magnitude, duplicate keys,
feedback events, carriers, invalid ids, fields out of order); other tests check that the common shapes are
not declined, and that garbage bytes are declined without harm.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otel_feedback import decode
from otel_feedback.decode import decode_traces, decode_traces_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

T = 1_700_000_000_000_000_000

pytestmark = pytest.mark.skipif(
    os.environ.get("OTEL_FEEDBACK_TEST_PURE_PYTHON") == "1", reason="testing a build without the C compiler"
)


def test_the_compiled_decoder_is_built() -> None:
    """CI installs with a C compiler: the extension must be there (set OTEL_FEEDBACK_TEST_PURE_PYTHON=1 to test
    a build without one)."""
    assert decode.COMPILED_DECODER


def both(request: ExportTraceServiceRequest, **kwargs: Any) -> tuple[pa.Table, pa.Table | None]:
    py = decode_traces(request, received_at_ns=T, **kwargs).table
    compiled = decode_traces_bytes(request.SerializeToString(), received_at_ns=T, **kwargs)
    return py, None if compiled is None else compiled.table


def assert_same(py: pa.Table, c: pa.Table) -> None:
    assert c.schema == py.schema
    c.validate(full=True)
    for name in py.schema.names:
        a, b = py[name].to_pylist(), c[name].to_pylist()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert x == y and type(x) is type(y), f"row {i} column {name}: python {x!r}, compiled {y!r}"


# ------------------------------------------------------------------------------------------- strategies

texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", 'a"b\\c', "\x00\x01\x1f\x7f", "line\nbreak\ttab\r\b\f", "é中😀\u2028", "/"]),
    # longer text, mostly plain, with what JSON escapes at any offset: the compiled decoder skips 8 plain bytes
    # at a time and must stop at every byte that needs escaping, wherever it falls in the 8
    st.lists(st.sampled_from(["x"] * 6 + ['"', "\\", "\n", "\x00", "\x1f", "\x7f", "é", "😀", " "]), max_size=40).map(
        "".join
    ),
)
SPECIAL_KEYS = (
    "session.id",
    "client_request_id",
    "gen_ai.request.model",
    "llm.model_name",
    "gen_ai.response.model",
    "input.value",
    "output.value",
    "user_feedback",
    "user_feedback_rating",
    "user_feedback_comment",
    "annotation_status",
    "service.name",
)
"""Keys the decoders read values from (derived columns, a resource's service name)."""
keys = st.one_of(st.sampled_from((*SPECIAL_KEYS, "annotations.x", "evaluations.y")), texts)
simple_values = st.one_of(
    st.just(AnyValue()),
    texts.map(lambda s: AnyValue(string_value=s)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
)
"""The values a derived column takes without declining (``str()`` of them is the same in C)."""
doubles = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 0.1, 1e15, 1e16, 1e-5, 1e-6, 5e-324, 1.7976931348623157e308, 123.456]),
)


def any_values(depth: int = 2, plain: bool = False) -> st.SearchStrategy[AnyValue]:
    """``plain``: maps with unique keys (a repeated key is declined)."""
    leaves = st.one_of(
        simple_values,
        doubles.map(lambda d: AnyValue(double_value=d)),
        st.binary(max_size=10).map(lambda b: AnyValue(bytes_value=b)),
    )
    if depth == 0:
        return leaves
    inner = any_values(depth - 1, plain)
    return st.one_of(
        leaves,
        st.lists(inner, max_size=3).map(lambda vs: AnyValue(array_value=ArrayValue(values=vs))),
        st.lists(st.tuples(keys, inner), max_size=3, unique_by=(lambda kv: kv[0]) if plain else None).map(
            lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs]))
        ),
    )


def attribute_lists(plain: bool) -> st.SearchStrategy[list[KeyValue]]:
    """``plain``: what the compiled decoder must take (unique keys, no carriers, the keys that feed derived
    columns holding strings, ints, bools or nothing); else anything, duplicates and carriers included."""
    if not plain:
        return st.lists(st.tuples(keys, any_values()), max_size=6).map(
            lambda kvs: [KeyValue(key=k, value=v) for k, v in kvs]
        )
    ordinary = st.text(max_size=10).filter(
        lambda k: k not in SPECIAL_KEYS and "annotations." not in k and not k.startswith("evaluations.")
    )
    pairs = st.one_of(
        st.tuples(ordinary, any_values(plain=True)), st.tuples(st.sampled_from(SPECIAL_KEYS), simple_values)
    )
    return st.lists(pairs, max_size=8, unique_by=lambda kv: kv[0]).map(
        lambda kvs: [KeyValue(key=k, value=v) for k, v in kvs]
    )


def id_bytes(size: int, plain: bool) -> st.SearchStrategy[bytes]:
    valid = st.binary(min_size=size, max_size=size).filter(any)
    return valid if plain else st.one_of(valid, st.sampled_from([bytes(size), b"\x01" * (size + 1)]))


@st.composite
def spans(draw: st.DrawFn, plain: bool) -> Span:
    attributes = attribute_lists(plain)
    times = st.integers(0, 2**63 - 1) if plain else st.integers(0, 2**64 - 1)
    span = Span(
        trace_id=draw(id_bytes(16, plain)),
        span_id=draw(id_bytes(8, plain)),
        parent_span_id=draw(st.one_of(st.just(b""), id_bytes(8, plain))),
        trace_state=draw(st.sampled_from(["", "k=v"])),
        name=draw(texts),
        kind=draw(st.integers(-1, 7)),
        start_time_unix_nano=draw(times | st.just(T)),
        end_time_unix_nano=draw(times | st.just(T + 5_000_123)),
        attributes=draw(attributes),
        dropped_attributes_count=draw(st.integers(0, 3)),
        dropped_events_count=draw(st.integers(0, 3)),
        dropped_links_count=draw(st.integers(0, 3)),
        flags=draw(st.sampled_from([0, 1, 0x301])),
        status=Status(code=draw(st.integers(-1, 4)), message=draw(texts)),
    )
    event_names = ["exception", "", "é", "retrieval"] + ([] if plain else ["user_feedback", "gen_ai.evaluation.result"])
    for _ in range(draw(st.integers(0, 2))):
        event = span.events.add(
            time_unix_nano=draw(st.integers(0, 2**64 - 1)),
            name=draw(st.sampled_from(event_names)),
            dropped_attributes_count=draw(st.integers(0, 2)),
        )
        event.attributes.extend(draw(attributes))
    for _ in range(draw(st.integers(0, 2))):
        link = span.links.add(
            trace_id=draw(id_bytes(16, plain)),
            span_id=draw(id_bytes(8, plain)),
            trace_state=draw(st.sampled_from(["", "a=b"])),
            flags=draw(st.sampled_from([0, 1, 257])),
            dropped_attributes_count=draw(st.integers(0, 2)),
        )
        link.attributes.extend(draw(attributes))
    return span


@st.composite
def requests(draw: st.DrawFn, plain: bool = False) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    attributes = attribute_lists(plain)
    for _ in range(draw(st.integers(1, 2))):
        rs: ResourceSpans = request.resource_spans.add()
        if draw(st.booleans()):
            rs.resource.attributes.extend(draw(attributes))
        for _ in range(draw(st.integers(1, 2))):
            ss: ScopeSpans = rs.scope_spans.add()
            if draw(st.booleans()):
                ss.scope.name = draw(texts)
                ss.scope.version = draw(st.sampled_from(["", "1.2"]))
                ss.scope.attributes.extend(draw(attributes))
            ss.spans.extend(draw(st.lists(spans(plain), min_size=1, max_size=3)))
    return request


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(plain=True))
def test_plain_requests_are_decoded_the_same(request: ExportTraceServiceRequest) -> None:
    py, compiled = both(request)
    assert compiled is not None, "declined a request it must take"
    assert_same(py, compiled)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sampled_from([4, 1024 * 1024]), st.sampled_from([("user_feedback", "feedback"), ("rated",)]))
def test_compiled_equals_python_or_declines(
    request: ExportTraceServiceRequest, max_bytes: int, names: tuple[str, ...]
) -> None:
    kwargs = {"max_attribute_bytes": max_bytes, "feedback_events": names}
    try:
        py = decode_traces(request, received_at_ns=T, **kwargs)
    except (OverflowError, pa.ArrowInvalid):
        py = None  # times past 2**63: the Python path fails the request, the compiled one must decline
    compiled = decode_traces_bytes(request.SerializeToString(), received_at_ns=T, **kwargs)
    if compiled is None:
        return
    assert py is not None, "the compiled decoder took a request the Python decoder fails"
    assert not py.rejected and not py.messages and not py.feedback, "the compiled decoder took what it must decline"
    assert_same(py.table, compiled.table)


def _plain_span(i: int, **attrs: Any) -> Span:
    span = Span(
        trace_id=(i + 1).to_bytes(16, "big"),
        span_id=(i + 1).to_bytes(8, "big"),
        name=f"span {i}",
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=T,
        end_time_unix_nano=T + 1_234_567,
    )
    for k, v in attrs.items():
        kv = span.attributes.add(key=k)
        if isinstance(v, bool):
            kv.value.bool_value = v
        elif isinstance(v, int):
            kv.value.int_value = v
        elif isinstance(v, float):
            kv.value.double_value = v
        else:
            kv.value.string_value = v
    return span


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"session.id": "s1", "client_request_id": 7, "gen_ai.request.model": "gpt", "input.value": "q"},
        {"llm.model_name": "", "gen_ai.response.model": 0},  # falsy models: ``or`` gives the last one
        {"user_feedback": "thumbs_up", "user_feedback_rating": 4, "annotation_status": "done"},
        {"temperature": 0.7, "score": 1e16, "tiny": 1.5e-7, "flag": True, "text": 'é\n"x"' * 50},
    ],
)
def test_common_shapes_are_not_declined(attrs: dict[str, Any]) -> None:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    rs.scope_spans.add().spans.extend([_plain_span(0, **attrs), _plain_span(1)])
    rs.scope_spans[0].spans[1].parent_span_id = (1).to_bytes(8, "big")
    py, compiled = both(request)
    assert compiled is not None
    assert_same(py, compiled)


def test_the_bench_workload_is_not_declined() -> None:
    from run import Workload, encode_request

    work = Workload(1, T)
    rng = random.Random(3)
    for i in range(8):
        raw = encode_request(work.traces(50), i % 4, rng)
        py = decode_traces(ExportTraceServiceRequest.FromString(raw), received_at_ns=T).table
        compiled = decode_traces_bytes(raw, received_at_ns=T)
        assert compiled is not None, f"request {i} declined"
        assert_same(py, compiled.table)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s: setattr(s, "trace_id", bytes(16)), "all-zero trace id: rejected with a message"),
        (lambda s: s.attributes.add(key="a").value.SetInParent(), "duplicate key"),
        (lambda s: s.attributes.add(key="annotations.correct").value.SetInParent(), "annotation carrier"),
        (lambda s: s.events.add(name="user_feedback"), "feedback span event"),
        (lambda s: s.attributes.add(key="long").value.__setattr__("string_value", "x" * 2000), "over the limit"),
        (lambda s: s.attributes.add(key="session.id").value.__setattr__("double_value", 1.5), "str() of a float"),
    ],
)
def test_declines_what_only_python_does(change: Any, why: str) -> None:
    request = ExportTraceServiceRequest()
    span = _plain_span(0, a=1)
    change(span)
    request.resource_spans.add().scope_spans.add().spans.append(span)
    assert decode_traces_bytes(request.SerializeToString(), max_attribute_bytes=1000) is None, why


def test_garbage_and_cut_requests_are_declined_not_crashed() -> None:
    from run import Workload, encode_request

    raw = encode_request(Workload(1, T).traces(5), 0, random.Random(1))
    rng = random.Random(7)
    taken = 0
    for cut in range(0, len(raw), max(1, len(raw) // 300)):
        out = decode_traces_bytes(raw[:cut])
        if out is not None:  # a cut at a field boundary is a valid, shorter request
            taken += 1
            py = decode_traces(ExportTraceServiceRequest.FromString(raw[:cut]), received_at_ns=T)
            assert out.table.num_rows == py.table.num_rows
    for _ in range(2000):
        junk = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            junk[rng.randrange(len(junk))] = rng.randrange(256)
        decode_traces_bytes(bytes(junk))  # must return (None or a table), never crash
        decode_traces_bytes(rng.randbytes(rng.randint(0, 64)))
    assert decode_traces_bytes(b"\xff\xff\xff") is None
    assert decode_traces_bytes(b"").table.num_rows == 0


@example(b"")
@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_random_bytes(raw: bytes) -> None:
    out = decode_traces_bytes(raw, received_at_ns=T)
    if out is not None:  # then protobuf must read it too, to the same table
        request = ExportTraceServiceRequest.FromString(raw)
        assert_same(decode_traces(request, received_at_ns=T).table, out.table)


def test_what_the_writer_stores_unchecked_is_valid_json(tmp_path: Path) -> None:
    """The writer hands decoder-made JSON to DuckDB as ``arrow.json`` (DuckDB does not re-check it): DuckDB
    must read every value back as valid JSON, typed JSON, with the values sent."""
    from otel_feedback.store import Store

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = 'svc "q"'
    tricky = {"ctl": "a\x00b\x1fc\n", "quote": 'he said "hi" \\ /', "uni": "é中😀\u2028", "num": 1e-7, "big": 2**63 - 1}
    rs.scope_spans.add().spans.extend([_plain_span(i, **tricky) for i in range(50)])
    decoded = decode_traces_bytes(request.SerializeToString())
    assert decoded is not None
    with Store(tmp_path / "j.duckdb") as store:
        store.append({"span_log": decoded.table})
        con = store.cursor()
        try:
            row = con.execute(
                "SELECT bool_and(json_valid(attributes)), bool_and(json_valid(resource_attributes)), "
                "any_value(typeof(attributes)), any_value(attributes->>'ctl'), any_value(attributes->>'quote'), "
                "any_value(attributes->>'uni'), any_value((attributes->'num')::DOUBLE), "
                "any_value((attributes->'big')::BIGINT), any_value(resource_attributes->>'service.name') FROM span_log"
            ).fetchone()
        finally:
            con.close()
    assert row == (True, True, "JSON", *(tricky[k] for k in ("ctl", "quote", "uni", "num", "big")), 'svc "q"')
