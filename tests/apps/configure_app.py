"""The notebook one-liner: ``configure(path=..., service_name=...)`` then plain OpenTelemetry API calls.

Usage: ``python configure_app.py PATH SERVICE``. Prints the ids it created as one JSON line and exits
normally without calling shutdown itself (the SDK flushes at interpreter exit).
"""

from __future__ import annotations

import json
import sys

from opentelemetry import trace

from otel_feedback import configure, current_span_id, current_trace_id


def main() -> None:
    configure(path=sys.argv[1], service_name=sys.argv[2])
    tracer = trace.get_tracer("notebook")
    created = []
    with tracer.start_as_current_span("cell"):
        created.append((current_trace_id(), current_span_id(), "cell"))
        with tracer.start_as_current_span("step"):
            created.append((current_trace_id(), current_span_id(), "step"))
    print("CREATED " + json.dumps(created), flush=True)


if __name__ == "__main__":
    main()
