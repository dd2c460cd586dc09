"""The two operations every way in ends in: append spans (and log records), append feedback.

Shared by the gRPC receiver, the HTTP API and the in-process paths, so that an OTLP request means
the same thing whichever transport carried it. ``Ingest`` decodes, pulls feedback out of the
telemetry, hands the rows to the store's writer and waits until they are committed: a caller that
gets a return value may acknowledge; any exception is one of :mod:`otel_feedback.errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from . import feedback as fb
from .config import Settings
from .decode import Decoded, decode_logs, decode_traces, decode_traces_bytes
from .model import FeedbackRow

_log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where rows go: a :class:`otel_feedback.store.Store` (or a recording sink in tests)."""

    def append(self, tables: dict[str, pa.Table], timeout: float | None = ...) -> int: ...


class Forward(Protocol):
    def traces(self, request: ExportTraceServiceRequest) -> None: ...
    def traces_bytes(self, raw: bytes) -> None: ...
    def logs(self, request: ExportLogsServiceRequest) -> None: ...


@dataclass
class Outcome:
    """What became of one request: rows accepted, rows rejected, and a message for partial success."""

    accepted: int
    rejected: int
    message: str


class Ingest:
    def __init__(
        self,
        sink: Sink,
        settings: Settings,
        config: fb.FeedbackConfig | None = None,
        forward: Forward | None = None,
        commit_timeout: float = 30.0,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.config = config or fb.FeedbackConfig(strict=settings.strict)
        self.limits = fb.Limits(settings.max_comment_bytes, settings.max_patch_keys)
        self.forward = forward
        self.commit_timeout = commit_timeout
        self._decode = {
            "max_attribute_bytes": settings.max_attribute_bytes,
            "feedback_events": settings.feedback_events,
        }

    def _append(self, main_table: str, decoded: Decoded) -> Outcome:
        """Append decoded telemetry and the feedback pulled out of it; returns once they are durable (journaled,
        or committed without a journal)."""
        tables = {main_table: decoded.table}
        messages = list(decoded.messages)
        if decoded.feedback:
            rows, problems = fb.rows_from_events(decoded.feedback, self.settings, self.config)
            messages.extend(problems)
            if rows:
                tables["feedback_log"] = fb.to_table(rows)
        self.sink.append(tables, timeout=self.commit_timeout)
        return Outcome(decoded.table.num_rows, decoded.rejected, _join(messages))

    def _check_room(self, rows: int) -> None:
        """Refuse (retryable) before a Python decode when the writer's queue is already full: under a flood, a
        refused request then costs a protobuf parse, not a decode into columns. (The compiled decoder is cheap
        enough that the writer's own check, when the rows are submitted, is the only one.)"""
        check = getattr(self.sink, "check_room", None)
        if check is not None and rows:
            check(rows)

    def traces(self, request: ExportTraceServiceRequest) -> Outcome:
        if not request.resource_spans:
            return Outcome(0, 0, "")
        self._check_room(sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans))
        outcome = self._append("span_log", decode_traces(request, **self._decode))
        if self.forward is not None:
            self.forward.traces(request)
        return outcome

    def traces_bytes(self, raw: bytes, parse: Callable[[bytes], ExportTraceServiceRequest]) -> Outcome:
        """A trace export request as protobuf bytes: decoded by the compiled decoder when it can take the
        request, else ``parse(raw)`` (which raises the caller's error for bytes that are not a request) and
        :meth:`traces`. The outcome is the same either way."""
        decoded = decode_traces_bytes(raw, **self._decode) if self.settings.compiled_decoder else None
        if decoded is None:
            return self.traces(parse(raw))
        outcome = self._append("span_log", decoded)  # the writer refuses it there if its queue is full
        if self.forward is not None:
            self.forward.traces_bytes(raw)
        return outcome

    def logs(self, request: ExportLogsServiceRequest) -> Outcome:
        self._check_room(sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs))
        outcome = self._append("log_records", decode_logs(request, **self._decode))
        if self.forward is not None:
            self.forward.logs(request)
        return outcome

    def feedback(self, rows: Sequence[FeedbackRow]) -> int:
        """Append validated feedback rows; returns once they are durable (journaled, or committed without a
        journal)."""
        if not rows:
            return 0
        return self.sink.append({"feedback_log": fb.to_table(rows)}, timeout=self.commit_timeout)

    def declare(self, decls: Sequence[fb.Declaration]) -> fb.FeedbackConfig:
        """Store feedback declarations (queryable as ``feedback_configs``) and validate with them from now on."""
        import time

        self.sink.append({"feedback_config": fb.declarations_table(decls, time.time_ns())}, timeout=self.commit_timeout)
        config = self.config
        for d in decls:
            config = config.with_declaration(d)
        self.config = config  # one assignment: requests see the old or the new config, never a mix
        return config

    # parsing helpers for the feedback ways in, with this server's limits and config
    def parse_record(self, body: Any, **kwargs: Any) -> FeedbackRow:
        return fb.parse_record(body, limits=self.limits, config=self.config, **kwargs)

    def parse_batch(self, body: Any, channel: str) -> list[FeedbackRow]:
        return fb.parse_batch(body, channel=channel, limits=self.limits, config=self.config)

    def parse_phoenix(self, body: Any, level: str) -> list[FeedbackRow]:
        return fb.parse_phoenix(body, level=level, limits=self.limits, config=self.config)


def _join(messages: list[str]) -> str:
    if len(messages) > 5:
        return "; ".join(messages[:5]) + f"; and {len(messages) - 5} more"
    return "; ".join(messages)
