"""The hex ids of the active span, to hand to a front end so its feedback can name the answer."""

from __future__ import annotations

from opentelemetry import trace


def current_trace_id() -> str | None:
    """32 lowercase hex digits of the active span's trace, or None outside a recorded span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def current_span_id() -> str | None:
    """16 lowercase hex digits of the active span, or None outside a recorded span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.span_id, "016x") if ctx.is_valid else None
