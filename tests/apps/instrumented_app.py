"""A small app that knows nothing about otel-feedback: it uses only the OpenTelemetry API.

Run it under ``opentelemetry-instrument`` with ``OTEL_TRACES_EXPORTER=otel_feedback``. It creates a few
nested spans with the global tracer, prints what it created as one JSON line, and exits normally (the
SDK flushes at interpreter exit).
"""

from __future__ import annotations

import json

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode


def _ids(span: trace.Span) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def main() -> None:
    tracer = trace.get_tracer("instrumented-app", "0.3.1")
    created: list[dict[str, object]] = []

    def record(
        span: trace.Span,
        name: str,
        parent: trace.Span | None,
        attributes: dict[str, object],
        status: tuple[str, str | None] = ("UNSET", None),
    ) -> None:
        trace_id, span_id = _ids(span)
        created.append(
            {
                "name": name,
                "trace_id": trace_id,
                "span_id": span_id,
                "parent_span_id": _ids(parent)[1] if parent is not None else None,
                "attributes": attributes,
                "status": status,
            }
        )

    for request in range(2):
        root_attrs = {"http.route": "/answer", "request.number": request, "session.id": f"session-{request}"}
        with tracer.start_as_current_span("handle request", kind=SpanKind.SERVER, attributes=root_attrs) as root:
            record(root, "handle request", None, root_attrs)
            llm_attrs = {"llm.model": "tiny", "llm.temperature": 0.5, "llm.streaming": False}
            with tracer.start_as_current_span("llm call", kind=SpanKind.CLIENT, attributes=llm_attrs) as llm:
                record(llm, "llm call", root, llm_attrs)
                tool_attrs = {"tool.args": ["a", "b"]}
                with tracer.start_as_current_span("tool", attributes=tool_attrs) as tool:
                    if request == 1:
                        tool.set_status(Status(StatusCode.ERROR, "tool failed"))
                        record(tool, "tool", llm, tool_attrs, ("ERROR", "tool failed"))
                    else:
                        record(tool, "tool", llm, tool_attrs)
    print("CREATED " + json.dumps(created), flush=True)


if __name__ == "__main__":
    main()
