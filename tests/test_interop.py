"""Other OpenTelemetry implementations talking to a real server: the Node.js SDK and the rotel collector.

Node: ``tests/interop/node/send.mjs`` sends traces and log events with the official JS exporters (gRPC,
OTLP/HTTP JSON, OTLP/HTTP protobuf; pinned in its lockfile) and writes down exactly what it handed to them;
every field must come back from SQL with its value and its type.

rotel (a Rust OTLP collector from PyPI) sits between the Python SDK and the server, forwarding over gRPC
with gzip; what the server stores must equal, field by field, the request the SDK itself encoded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from otel_feedback.server import Server

from .conftest import ROOT, sql

NODE_DIR = ROOT / "tests" / "interop" / "node"
KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS = ("UNSET", "OK", "ERROR")
JSON_TYPES = {"string": {"VARCHAR"}, "bool": {"BOOLEAN"}, "int": {"BIGINT", "UBIGINT", "HUGEINT"}, "double": {"DOUBLE"}}

SPAN_COLUMNS = """
    trace_id, span_id, parent_span_id, trace_state, flags, name, kind,
    epoch_ns(start_time) AS start_ns, epoch_ns(end_time) AS end_ns, status_code, status_message,
    service_name, scope_name, scope_version, attributes, json_structure(attributes) AS attribute_types,
    resource_attributes, events, links, dropped_attributes_count, dropped_events_count, dropped_links_count
"""


def typed(value: Any) -> Any:
    """A value with the type of every scalar attached, so ``True`` never equals ``1`` nor ``2`` ``2.0``."""
    if isinstance(value, list):
        return ["list", [typed(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", {k: typed(v) for k, v in value.items()}]
    return [type(value).__name__, value]


def wait_for(fn: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


# -- Node.js ---------------------------------------------------------------------------------------


def node_values(described: dict[str, Any]) -> dict[str, Any]:
    """send.mjs's ``{"type", "value"}`` attributes as plain values."""
    return {k: v["value"] for k, v in described.items()}


def check_types(stored_types: str, described: dict[str, Any], where: str) -> None:
    """DuckDB's view of each stored attribute's JSON type agrees with the type the SDK sent."""
    types = json.loads(stored_types) if stored_types else {}
    if not isinstance(types, dict):  # json_structure('{}') is "JSON"
        types = {}
    assert set(types) == set(described), where
    for key, d in described.items():
        got = types[key]
        if d["type"] == "array":
            assert isinstance(got, list), f"{where}.{key}: {got}"
            items = {t for t in d["itemTypes"]}
            if not items:
                assert got == ["NULL"], f"{where}.{key}: {got}"
            else:
                (item,) = items  # the arrays sent are homogeneous
                assert got[0] in JSON_TYPES[item], f"{where}.{key}: {got} is not {item}"
        else:
            assert got in JSON_TYPES[d["type"]], f"{where}.{key}: stored as {got}, sent as {d['type']}"


def run_node(protocol: str, endpoint: str, out: Path, compression: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed on this machine (the Node.js interop client needs Node >= 20)")
    assert (NODE_DIR / "node_modules").is_dir(), (
        "tests/interop/node/node_modules is missing: npm ci --prefix tests/interop/node --no-audit --no-fund "
        "--ignore-scripts"
    )
    result = subprocess.run(
        [node, str(NODE_DIR / "send.mjs"), protocol, endpoint, str(out), f"--compression={compression}"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, f"send.mjs failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["protocol"] == protocol, doc
    return doc


@pytest.mark.parametrize(
    ("protocol", "compression"),
    [("grpc", "none"), ("grpc", "gzip"), ("http-json", "none"), ("http-json", "gzip"), ("http-proto", "gzip")],
)
def test_node_sdk_traces_and_log_events_round_trip(server: Server, tmp_path, protocol, compression):
    endpoint = f"http://{server.grpc_target}" if protocol == "grpc" else server.http_url
    doc = run_node(protocol, endpoint, tmp_path / "sent.json", compression)
    assert {v for k, v in doc["sdkVersions"].items() if "exporter" in k} == {"0.223.0"}, doc["sdkVersions"]
    sent = {s["spanId"]: s for s in doc["spans"]}
    assert len(sent) == 4
    # Everything the exporter call acknowledged is committed: query at once, no waiting.
    rows = {r["span_id"]: r for r in sql(server, f"SELECT {SPAN_COLUMNS} FROM span_log")}
    assert set(rows) == set(sent)

    for span_id, s in sent.items():
        r = rows[span_id]
        where = f"{protocol}:{s['name']}"
        assert r["trace_id"] == s["traceId"], where
        assert r["parent_span_id"] == (s["parentSpanId"] or None), where
        assert r["name"] == s["name"] and r["kind"] == KINDS[s["kind"]], where
        assert (r["start_ns"], r["end_ns"]) == (int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"])), where
        assert r["status_code"] == STATUS[s["status"]["code"]], where
        assert r["status_message"] == (s["status"]["message"] or None), where
        assert r["flags"] == s["flags"] and r["trace_state"] == (s["traceState"] or None), where
        assert r["service_name"] == doc["serviceName"] == "node-interop", where
        assert (r["scope_name"], r["scope_version"]) == (s["scope"]["name"], s["scope"]["version"]), where
        assert typed(json.loads(r["attributes"])) == typed(node_values(s["attributes"])), where
        check_types(r["attribute_types"], s["attributes"], where)
        assert typed(json.loads(r["resource_attributes"])) == typed(node_values(s["resource"])), where
        assert json.loads(r["resource_attributes"])["interop.protocol"] == protocol
        events = json.loads(r["events"]) if r["events"] else []
        assert [(e["name"], e["time_unix_nano"], typed(e["attributes"])) for e in events] == [
            (e["name"], int(e["timeUnixNano"]), typed(node_values(e["attributes"]))) for e in s["events"]
        ], where
        links = json.loads(r["links"]) if r["links"] else []
        assert [(li["trace_id"], li["span_id"], li.get("flags"), typed(li["attributes"])) for li in links] == [
            (li["traceId"], li["spanId"], li["flags"], typed(node_values(li["attributes"]))) for li in s["links"]
        ], where
        assert (r["dropped_attributes_count"], r["dropped_events_count"], r["dropped_links_count"]) == (
            s["droppedAttributesCount"],
            s["droppedEventsCount"],
            s["droppedLinksCount"],
        ), where

    # The shape that was sent, spelled out, so a send.mjs change cannot make this test vacuous.
    by_name = {s["name"]: s for s in doc["spans"]}
    chat, retrieve, llm, feedback = (by_name[n] for n in ("chat", "retrieve", "llm", "feedback"))
    assert retrieve["parentSpanId"] == llm["parentSpanId"] == chat["spanId"] and not chat["parentSpanId"]
    assert feedback["links"][0]["spanId"] == llm["spanId"] and feedback["traceId"] != chat["traceId"]
    assert rows[llm["spanId"]]["status_message"] == "model timed out"
    assert json.loads(rows[chat["spanId"]]["attribute_types"])["attr.int_large"] in ("BIGINT", "UBIGINT")
    assert [e["name"] for e in json.loads(rows[retrieve["spanId"]]["events"])] == ["retrieved"]

    # The `spans` view: same parentage, and the log event's feedback merged onto the span it names.
    view = {
        r["span_id"]: r
        for r in sql(
            server,
            "SELECT span_id, parent_span_id, name, user_feedback, user_feedback_rating, feedback_count FROM spans",
        )
    }
    assert {k: (v["parent_span_id"], v["name"]) for k, v in view.items()} == {
        k: (s["parentSpanId"] or None, s["name"]) for k, s in sent.items()
    }
    assert (view[chat["spanId"]]["user_feedback"], view[chat["spanId"]]["user_feedback_rating"]) == ("negative", 2.0)
    assert view[chat["spanId"]]["feedback_count"] == 1
    assert all(v["feedback_count"] == 0 for k, v in view.items() if k != chat["spanId"])

    # Log records, as sent.
    logs = sql(
        server,
        "SELECT epoch_ns(time) AS t, epoch_ns(observed_time) AS ot, trace_id, span_id, flags, severity_number, "
        "severity_text, event_name, body, attributes, json_structure(attributes) AS attribute_types, "
        "resource_attributes, service_name, scope_name, scope_version FROM log_records ORDER BY body",
    )
    expected_logs = sorted(doc["logs"], key=lambda lg: json.dumps(lg["body"]["value"]))
    assert len(logs) == len(expected_logs) == 2
    for r, lg in zip(logs, expected_logs, strict=True):
        where = f"{protocol}:log {lg['body']['value']!r}"
        assert (r["t"], r["ot"]) == (int(lg["timeUnixNano"]), int(lg["observedTimeUnixNano"])), where
        assert (r["trace_id"], r["span_id"]) == (lg["traceId"] or None, lg["spanId"] or None), where
        assert r["flags"] == (lg["flags"] or None), where
        assert r["severity_number"] == (lg["severityNumber"] or None), where
        assert r["severity_text"] == (lg["severityText"] or None), where
        expected_event = lg["eventName"] or node_values(lg["attributes"]).get("event.name")
        assert r["event_name"] == expected_event, where
        assert typed(json.loads(r["body"])) == typed(lg["body"]["value"]), where
        assert typed(json.loads(r["attributes"])) == typed(node_values(lg["attributes"])), where
        check_types(r["attribute_types"], lg["attributes"], where)
        assert typed(json.loads(r["resource_attributes"])) == typed(node_values(lg["resource"])), where
        assert (r["service_name"], r["scope_name"], r["scope_version"]) == (
            "node-interop",
            lg["scope"]["name"],
            lg["scope"]["version"],
        ), where
    event = next(lg for lg in doc["logs"] if lg["traceId"])
    assert (event["traceId"], event["spanId"]) == (chat["traceId"], chat["spanId"])
    fb = sql(server, "SELECT trace_id, span_id, attributes, channel, epoch_ns(feedback_time) AS t FROM feedback_log")
    assert [(f["trace_id"], f["span_id"], json.loads(f["attributes"]), f["channel"], f["t"]) for f in fb] == [
        (chat["traceId"], chat["spanId"], {"user_feedback": "negative", "user_feedback_rating": 2}, "otlp_log",
         int(event["timeUnixNano"]))
    ]  # fmt: skip


# -- rotel -----------------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def rotel(server: Server, tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    """rotel-agent forwarding to ``server`` over gRPC with gzip; yields (gRPC target, HTTP URL, process)."""
    import rotel as rotel_pkg

    binary = Path(rotel_pkg.__file__).parent / "rotel-agent"
    assert binary.is_file(), f"{binary} is missing (pip install rotel==0.0.1a15)"
    grpc_port, http_port = _free_ports(2)  # rotel panics on port 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
    proc = subprocess.Popen(
        [
            str(binary), "start",
            "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
            "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
            "--exporter", "otlp",
            "--otlp-exporter-endpoint", f"http://{server.grpc_target}",
            "--otlp-exporter-protocol", "grpc",
            "--otlp-exporter-compression", "gzip",
            "--batch-timeout", "20ms",
            "--otlp-exporter-retry-initial-backoff", "100ms",
            "--otlp-exporter-retry-max-backoff", "500ms",
            "--otlp-exporter-retry-max-elapsed-time", "5s",
            "--pid-file", str(tmp_path / "rotel.pid"),
            "--log-file", str(tmp_path / "rotel.log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        for port in (grpc_port, http_port):
            while True:
                assert proc.poll() is None, (
                    f"rotel exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
                )
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "rotel did not start listening within 20 s"
                    time.sleep(0.05)
        yield f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)


def any_value(v: Any) -> Any:
    """An OTLP AnyValue as a plain Python value (the test's own reading, independent of the product's)."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return None if which is None else getattr(v, which)


def key_values(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def make_sdk_spans(exporter: Any, n_bulk: int) -> list[Any]:
    """Spans of many shapes through ``exporter``; returns the ReadableSpans the SDK finished."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "via-rotel", "deployment.environment": "ci"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("rotel-interop", "2.0.1")
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "opaque-value"), ("other", "x")]),
    )
    other = SpanContext(trace_id=0x11111111111111112222222222222222, span_id=0x3333333333333333, is_remote=False)
    attrs = {
        "s": "héllo ✓",
        "empty": "",
        "t": True,
        "f": False,
        "i": 42,
        "neg": -7,
        "big": 2**62,
        "d": 3.25,
        "dneg": -0.001,
        "sa": ["a", "", "c"],
        "ba": [True, False],
        "ia": [1, -2, 3],
        "da": [0.5, 1.25],
    }
    with tracer.start_as_current_span(
        "rotel-root", context=set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.SERVER, attributes=attrs
    ) as root:
        root.add_event("started", {"step": 1, "why": "test", "ok": True, "ratio": 0.5})
        root.add_event("empty-event")
        with tracer.start_as_current_span(
            "rotel-child", kind=SpanKind.CLIENT, links=[Link(other, {"link.kind": "follows", "link.n": 3})]
        ) as child:
            child.set_status(Status(StatusCode.ERROR, "upstream failed"))
            child.set_attribute("retry.count", 2)
        with tracer.start_as_current_span("rotel-ok", kind=SpanKind.PRODUCER) as ok:
            ok.set_status(Status(StatusCode.OK))
    for i in range(n_bulk):
        with tracer.start_as_current_span("bulk", kind=SpanKind.CONSUMER, attributes={"n": i, "label": f"#{i}"}):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_spans_through_rotel_arrive_intact(server: Server, rotel, transport):
    grpc_target, http_url, proc = rotel
    exporter = (
        GrpcSpanExporter(endpoint=grpc_target, insecure=True)
        if transport == "grpc"
        else HttpSpanExporter(endpoint=f"{http_url}/v1/traces")
    )
    finished = make_sdk_spans(exporter, n_bulk=200)
    # What the SDK itself put on the wire, decoded by this test, is what must be stored.
    request = encode_spans(finished)
    sent = {}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                sent[span.span_id.hex()] = (rs.resource, ss.scope, span)
    assert len(sent) == 203

    def stored() -> dict[str, dict[str, Any]]:
        got = {r["span_id"]: r for r in sql(server, f"SELECT {SPAN_COLUMNS} FROM span_log")}
        return got if len(got) >= len(sent) else {}

    rows = wait_for(stored, timeout=20)
    assert len(rows) == len(sent), f"{len(rows)} of {len(sent)} spans arrived through rotel"
    assert sql(server, "SELECT count(*) AS n FROM span_log")[0]["n"] == len(sent)  # each once

    for span_id, (resource, scope, span) in sent.items():
        r = rows[span_id]
        where = f"{transport}:{span.name}:{span_id}"
        assert r["trace_id"] == span.trace_id.hex(), where
        assert r["parent_span_id"] == (span.parent_span_id.hex() or None), where
        assert r["trace_state"] == (span.trace_state or None), where
        assert r["flags"] == (span.flags or None), where
        assert r["name"] == span.name and r["kind"] == KINDS[span.kind], where
        assert (r["start_ns"], r["end_ns"]) == (span.start_time_unix_nano, span.end_time_unix_nano), where
        assert r["status_code"] == STATUS[span.status.code], where
        assert r["status_message"] == (span.status.message or None), where
        assert typed(json.loads(r["attributes"])) == typed(key_values(span.attributes)), where
        assert typed(json.loads(r["resource_attributes"])) == typed(key_values(resource.attributes)), where
        assert r["service_name"] == "via-rotel", where
        assert (r["scope_name"], r["scope_version"]) == (scope.name, scope.version), where
        events = json.loads(r["events"]) if r["events"] else []
        assert [(e["name"], e["time_unix_nano"], typed(e["attributes"])) for e in events] == [
            (e.name, e.time_unix_nano, typed(key_values(e.attributes))) for e in span.events
        ], where
        links = json.loads(r["links"]) if r["links"] else []
        assert [
            (li["trace_id"], li["span_id"], li.get("trace_state"), li.get("flags"), typed(li["attributes"]))
            for li in links
        ] == [
            (li.trace_id.hex(), li.span_id.hex(), li.trace_state or None, li.flags or None,
             typed(key_values(li.attributes)))
            for li in span.links
        ], where  # fmt: skip
        assert (r["dropped_attributes_count"], r["dropped_events_count"], r["dropped_links_count"]) == (
            span.dropped_attributes_count,
            span.dropped_events_count,
            span.dropped_links_count,
        ), where

    # The interesting shapes really were sent (so the comparison above is not vacuous).
    by_name = {span.name: (span, rows[sid]) for sid, (_, _, span) in sent.items() if span.name != "bulk"}
    _, root_row = by_name["rotel-root"]
    assert root_row["parent_span_id"] == "b7ad6b7169203331" and root_row["trace_state"] == "vendor=opaque-value,other=x"
    assert root_row["flags"] == 0x300  # parent is remote: OTLP's has-is-remote and is-remote bits (the Python
    # SDK leaves the W3C trace-flags byte of Span.flags at 0)
    assert json.loads(root_row["attribute_types"])["big"] in ("BIGINT", "UBIGINT")
    assert json.loads(root_row["attributes"])["big"] == 2**62
    assert by_name["rotel-child"][1]["status_message"] == "upstream failed"
    assert json.loads(by_name["rotel-child"][1]["links"])[0]["attributes"] == {"link.kind": "follows", "link.n": 3}

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
