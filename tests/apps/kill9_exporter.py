"""Export N spans through ``BatchSpanProcessor(DuckDBSpanExporter(path))``, flush, report, then block.

Usage: ``python kill9_exporter.py PATH N``. Once ``force_flush()`` returned True it prints
``FLUSHED <n> <sha256 of the sorted span ids>`` and then sleeps until it is killed; the test sends
SIGKILL and checks that every span is in the file.
"""

from __future__ import annotations

import hashlib
import sys
import threading

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import set_span_in_context

from otel_feedback import DuckDBSpanExporter


def main() -> None:
    path, n = sys.argv[1], int(sys.argv[2])
    provider = TracerProvider(resource=Resource.create({"service.name": "kill9-app"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            DuckDBSpanExporter(path), max_queue_size=n, max_export_batch_size=min(512, n), schedule_delay_millis=60_000
        )
    )
    tracer = provider.get_tracer("kill9")
    span_ids = []
    made = 0
    while made < n:  # traces of up to 50 spans: a root, then children of the previous span's parent chain
        open_spans = []
        for depth in range(min(50, n - made)):
            parent = open_spans[(depth - 1) // 2] if depth else None
            ctx = set_span_in_context(parent) if parent is not None else None
            span = tracer.start_span(f"span {made}", context=ctx, attributes={"n": made})
            open_spans.append(span)
            span_ids.append(format(span.get_span_context().span_id, "016x"))
            made += 1
        for span in reversed(open_spans):
            span.end()
    if not provider.force_flush(60_000):
        print("FLUSH FAILED", flush=True)
        sys.exit(1)
    digest = hashlib.sha256("\n".join(sorted(span_ids)).encode()).hexdigest()
    print(f"FLUSHED {n} {digest}", flush=True)
    threading.Event().wait()  # block until killed


if __name__ == "__main__":
    main()
