"""In-process export: OpenTelemetry SDK spans straight into the DuckDB file, no server.

``DuckDBSpanExporter`` is a standard ``SpanExporter``. ``export`` returns only once the batch is
committed, because the SDK's ``BatchSpanProcessor.force_flush`` counts a batch as flushed when
``export`` returns: after ``force_flush()`` returned True, a ``kill -9`` loses nothing. Use it under
``BatchSpanProcessor`` (as :func:`configure` and ``OTEL_TRACES_EXPORTER=otel_feedback`` do) so the
commit happens on the processor's thread, never on a request thread.

Spans are turned into rows by OTel's own ``encode_spans`` followed by :mod:`otel_feedback.decode`,
so the in-process path and the OTLP receivers share one normalization.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from . import feedback as _feedback
from .config import Settings
from .decode import decode_traces, decode_traces_bytes
from .errors import OtelFeedbackError
from .store import Store, shared_store

_log = logging.getLogger(__name__)


class _OnceLogger:
    """Logs each distinct failure message once, so a broken disk does not flood the host's logs."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def warning(self, message: str) -> None:
        with self._lock:
            if message in self._seen or len(self._seen) > 100:
                return
            self._seen.add(message)
        _log.warning("otel-feedback: %s (further identical messages are suppressed)", message)


class DuckDBSpanExporter(SpanExporter):
    """Writes finished spans into an otel-feedback DuckDB file.

    ``path`` defaults to ``OTEL_FEEDBACK_DB`` (else ``otel-feedback.duckdb``). The file is opened on
    the first export, so constructing the exporter never fails because of the file. ``export``
    never raises; failures return ``SpanExportResult.FAILURE``, are logged once and counted in
    ``failed_spans``.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        store: Store | None = None,
        timeout_millis: int = 30_000,
        settings: Settings | None = None,
    ) -> None:
        if timeout_millis <= 0:
            raise ValueError(f"timeout_millis must be > 0, got {timeout_millis}")
        self._settings = settings or Settings.load(db=str(path) if path is not None else None)
        self._store = store
        self._timeout_s = timeout_millis / 1000
        self._shutdown = False
        self._lock = threading.Lock()
        self._errors = _OnceLogger()
        self.exported_spans = 0
        self.failed_spans = 0

    @property
    def path(self) -> str:
        return self._store.path if self._store is not None else self._settings.db

    def _get_store(self) -> Store:
        with self._lock:
            if self._store is None or self._store.closed:
                s = self._settings
                self._store = shared_store(s.db, queue_rows=s.queue_rows, commit_rows=s.commit_rows, journal=s.journal)
            return self._store

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            self._errors.warning("export called after shutdown; spans dropped")
            self.failed_spans += len(spans)
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            s = self._settings
            options = {"max_attribute_bytes": s.max_attribute_bytes, "feedback_events": s.feedback_events}
            request = encode_spans(spans)
            # serializing the message and decoding the bytes in C costs less than decoding the message in Python
            decoded = decode_traces_bytes(request.SerializeToString(), **options) if s.compiled_decoder else None
            if decoded is None:
                decoded = decode_traces(request, **options)
            tables: dict[str, Any] = {"span_log": decoded.table}
            if decoded.feedback:
                rows, _problems = _feedback.rows_from_events(decoded.feedback, s)
                if rows:
                    tables["feedback_log"] = _feedback.to_table(rows)
            self._get_store().submit(tables).result(self._timeout_s)
        except (OtelFeedbackError, TimeoutError, OSError) as exc:
            self.failed_spans += len(spans)
            self._errors.warning(f"could not write {len(spans)} span(s) to {self.path}: {exc}")
            return SpanExportResult.FAILURE
        except Exception as exc:  # the telemetry path never raises into the host app
            self.failed_spans += len(spans)
            self._errors.warning(f"unexpected error exporting spans: {type(exc).__name__}: {exc}")
            return SpanExportResult.FAILURE
        self.exported_spans += len(spans)
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """True once everything exported so far is committed (``export`` already waits for it)."""
        store = self._store
        return True if store is None or store.closed else store.flush(timeout_millis)

    def shutdown(self, timeout_millis: int = 30_000) -> None:
        """Flush and stop; idempotent. The shared store stays open for other users in the process
        (``record_feedback``) and is closed at interpreter exit."""
        if self._shutdown:
            return
        self._shutdown = True
        self.force_flush(timeout_millis)


def configure(
    path: str | Path | None = None,
    *,
    service_name: str | None = None,
    set_global: bool = True,
    schedule_delay_millis: int = 500,
) -> TracerProvider:
    """One line for notebooks and scripts: a tracer provider that writes spans into ``path``.

    Returns the provider (call ``provider.shutdown()`` or ``force_flush()`` at the end of a script).
    With ``set_global`` it also becomes the global tracer provider.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource

    attrs = {"service.name": service_name} if service_name else {}
    provider = TracerProvider(resource=Resource.create(attrs))
    provider.add_span_processor(
        BatchSpanProcessor(DuckDBSpanExporter(path), schedule_delay_millis=schedule_delay_millis)
    )
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def record_feedback(
    trace_id: str | None = None,
    span_id: str | None = None,
    *,
    path: str | Path | None = None,
    wait: bool = True,
    **fields: Any,
) -> str:
    """Store one feedback record in-process, when this app owns the DuckDB file (no server).

    Takes the same fields as :meth:`otel_feedback.FeedbackClient.send` (``user_feedback``, ``rating``,
    ``category``, ``comment``, ``attributes``, ``name``/``label``/``score``/``explanation``, ``source_kind``,
    ``source_id``, ``id``, ``timestamp``, ``target=("session.id", "s-1")``...). Without ``trace_id`` and
    ``target`` it targets the active span. Returns the record's id; raises
    :class:`otel_feedback.InvalidRequest` naming the bad field. With ``wait`` it returns once the record
    is durable (and every query through otel-feedback sees it).
    """
    from .client import _record
    from .ids import current_span_id, current_trace_id

    if trace_id is None and span_id is None and fields.get("target") is None:
        trace_id, span_id = current_trace_id(), current_span_id()
    known = {
        "id", "attributes", "user_feedback", "rating", "category", "comment", "name", "label", "score",
        "explanation", "expected", "error", "source_kind", "source_id", "timestamp", "target", "metadata",
    }  # fmt: skip
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"record_feedback() got unexpected keyword argument {unknown[0]!r}")
    record = _record(trace_id, span_id, **{k: fields.get(k) for k in known})
    settings = Settings.load(db=str(path) if path is not None else None)
    row = _feedback.parse_record(
        record,
        channel="in_process",
        limits=_feedback.Limits(settings.max_comment_bytes, settings.max_patch_keys),
        config=_feedback.FeedbackConfig(strict=settings.strict),
        where="record_feedback",
    )
    store = shared_store(
        settings.db, queue_rows=settings.queue_rows, commit_rows=settings.commit_rows, journal=settings.journal
    )
    future = store.submit({"feedback_log": _feedback.to_table([row])})
    if wait:
        future.result(60)
    return row.feedback_id
