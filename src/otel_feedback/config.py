"""Every ``OTEL_FEEDBACK_*`` setting: its name, default and meaning, in one place.

Precedence is always: an explicit argument (or CLI flag), then the environment variable, then the
default below. No other module reads ``os.environ``. A bad value raises :class:`ConfigError` naming
the variable, so a server refuses to start instead of guessing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError

OTEL_FEEDBACK_DB = "OTEL_FEEDBACK_DB"
"""Path of the DuckDB file. Default: ``otel-feedback.duckdb`` in the working directory."""

OTEL_FEEDBACK_HOST = "OTEL_FEEDBACK_HOST"
"""Address ``serve`` listens on. Default ``127.0.0.1`` (loopback only); use ``0.0.0.0`` to accept others."""

OTEL_FEEDBACK_GRPC_PORT = "OTEL_FEEDBACK_GRPC_PORT"
"""Port of the OTLP/gRPC receiver (and the FeedbackService). Default 4317; 0 picks a free port."""

OTEL_FEEDBACK_HTTP_PORT = "OTEL_FEEDBACK_HTTP_PORT"
"""Port of the OTLP/HTTP receiver and the feedback/query HTTP API. Default 4318; 0 picks a free port."""

OTEL_FEEDBACK_URL = "OTEL_FEEDBACK_URL"
"""Base URL of a running server, used by ``query``/``export``/``FeedbackClient``. Default: none."""

OTEL_FEEDBACK_QUEUE_ROWS = "OTEL_FEEDBACK_QUEUE_ROWS"
"""Most rows waiting for the writer before new work is refused with a retryable error. Default 200000."""

OTEL_FEEDBACK_COMMIT_ROWS = "OTEL_FEEDBACK_COMMIT_ROWS"
"""Rows the writer gathers into one transaction at most (group commit). Default 50000."""

OTEL_FEEDBACK_MAX_BODY_BYTES = "OTEL_FEEDBACK_MAX_BODY_BYTES"
"""Largest request accepted, after decompression, on gRPC and HTTP. Default 67108864 (64 MiB, OTLP's advice)."""

OTEL_FEEDBACK_MAX_ATTRIBUTE_BYTES = "OTEL_FEEDBACK_MAX_ATTRIBUTE_BYTES"
"""Largest single attribute value kept on a span; longer strings are cut and the span's
``dropped_attributes_count`` is not changed but ``otel_feedback.truncated_keys`` names them. Default 1048576."""

OTEL_FEEDBACK_FEEDBACK_EVENTS = "OTEL_FEEDBACK_FEEDBACK_EVENTS"
"""Comma-separated event names that carry feedback (log records and span events).
Default ``user_feedback,feedback``; ``gen_ai.evaluation.result`` is always recognised."""

OTEL_FEEDBACK_MAX_COMMENT_BYTES = "OTEL_FEEDBACK_MAX_COMMENT_BYTES"
"""Longest free-text feedback value (comment, explanation, any string attribute in a patch). Default 16384."""

OTEL_FEEDBACK_MAX_PATCH_KEYS = "OTEL_FEEDBACK_MAX_PATCH_KEYS"
"""Most attributes one feedback record may set. Default 128."""

OTEL_FEEDBACK_STRICT = "OTEL_FEEDBACK_STRICT"
"""``true`` refuses feedback names that are not declared in the feedback config. Default ``false``."""

OTEL_FEEDBACK_CONFIG = "OTEL_FEEDBACK_CONFIG"
"""Path of a JSON file declaring feedback names and types (see README). Default: none."""

OTEL_FEEDBACK_CORS_ORIGINS = "OTEL_FEEDBACK_CORS_ORIGINS"
"""Comma-separated origins allowed to call the HTTP API from a browser (``*`` for any). Default: none."""

OTEL_FEEDBACK_QUERY_MAX_ROWS = "OTEL_FEEDBACK_QUERY_MAX_ROWS"
"""Row cap of a query sent to a running server; more rows are cut and reported as truncated. Default 10000."""

OTEL_FEEDBACK_QUERY_TIMEOUT_MS = "OTEL_FEEDBACK_QUERY_TIMEOUT_MS"
"""Time limit of a query sent to a running server, in milliseconds. Default 30000."""

OTEL_FEEDBACK_FORWARD_TO = "OTEL_FEEDBACK_FORWARD_TO"
"""OTLP/gRPC endpoint (``http://host:port``) that ``serve`` re-exports everything it receives to. Default: none."""

OTEL_FEEDBACK_MEMORY_LIMIT = "OTEL_FEEDBACK_MEMORY_LIMIT"
"""Most memory DuckDB may use in ``serve`` (its ``memory_limit``: ``512MB``, ``2GB``...). DuckDB works within
``OTEL_FEEDBACK_MEMORY_TARGET``; a query that runs out of memory there is run once more with this limit (and
the writer's append likewise). Bigger aggregations and sorts spill to ``<db>.tmp`` next to the file first; a
query that does not fit even here is refused with an error naming this variable. Default ``512MB`` (DuckDB's own
default is 80% of the machine)."""

OTEL_FEEDBACK_MEMORY_TARGET = "OTEL_FEEDBACK_MEMORY_TARGET"
"""The memory DuckDB works within in ``serve``, unless something needs more (see
``OTEL_FEEDBACK_MEMORY_LIMIT``). DuckDB fills whatever limit it has with cached blocks of the file, so this sets
the server's memory while queries run. Some queries need far more than their data (each hash table takes 8-16 MB
whatever its input: the report's ``judge_agreement`` ~150 MB on a 144-span file); those run again within the
limit, in twice the time, and are remembered by their SQL, so that they run within the limit at once the next time. And what queries read is cached within it: a ``spans`` lookup by trace id reads ~30 MB
of ids per million spans, which stops fitting beside the rows not yet checkpointed at around 1-2 M spans, and then
every lookup reads them again (feedback-to-visible p50 ~5 ms slower at 1 M spans than at 512MB). Default ``96MB``
(the benchmark's views over 2.9 M spans run within it, ``feedback_by_hour`` and ``worst_traces`` in-process as fast
as at 128MB: 0.21 and 0.41 s, and within 80MB 20 % and 10 % slower); raise it for a large file when lookups must
be fast, or set it to the limit to give every query the whole limit at once."""

OTEL_FEEDBACK_IDLE_CACHE = "OTEL_FEEDBACK_IDLE_CACHE"
"""How much of DuckDB's cache of the file ``serve`` keeps while no query runs. DuckDB keeps the blocks it writes
and reads up to its limit although ingest never reads them again; at most once a second, once no query has run
for a quarter of a second, the writer hands back all but this much. Default ``16MB``; set it to ``OTEL_FEEDBACK_MEMORY_TARGET`` to
keep DuckDB's own behaviour."""

OTEL_FEEDBACK_CHECKPOINT_THRESHOLD = "OTEL_FEEDBACK_CHECKPOINT_THRESHOLD"
"""How much is appended before it is checkpointed into the file. With the journal (the default) DuckDB writes no
WAL and the writer checkpoints after this many bytes of rows (Arrow) and 5 s after the last write; without it,
DuckDB checkpoints once its WAL is this large (DuckDB's ``checkpoint_threshold``). Rows appended since the last
checkpoint are held in memory, so this bounds the server's memory under sustained ingest. Default ``24MB``: about
one DuckDB row group (16,384 rows) of LLM-app spans, so a checkpoint rarely rewrites a partly filled one (in the
benchmark against 32MB: 10 MB less memory at the median, 7 % less CPU per span)."""

OTEL_FEEDBACK_THREADS = "OTEL_FEEDBACK_THREADS"
"""Threads DuckDB works with in ``serve`` while queries run (its ``threads``); once none has run for a quarter of a
second, one fewer (at least one), so that ingest leaves a core to the receivers (gRPC, decoding and the journal take
about a core under full ingest, and DuckDB's threads contended with them: on 2 cores, one DuckDB thread ingested
15-25 % more at ~15 % less CPU per span in ``bench/memory.py``; one thread for queries too made them ~1.5x slower).
Default ``0``: the cores this process may run on."""

OTEL_FEEDBACK_COMPILED_DECODER = "OTEL_FEEDBACK_COMPILED_DECODER"
"""``false`` decodes OTLP traces in Python even where the compiled decoder is built (for comparison: decoding is
about 4x slower, server ingest about half as fast). Default ``true``; ``otel-feedback serve`` says at start which decoder it uses."""

OTEL_FEEDBACK_JOURNAL = "OTEL_FEEDBACK_JOURNAL"
"""``true`` (default): a write is acknowledged once it is in the journal beside the file (``<db>.journal``,
appended and ``fdatasync``ed), and applied to DuckDB in large transactions right after; queries wait for what
was acknowledged before them, and the next open applies whatever a crash left in the journal. ``false``:
acknowledged only after its own DuckDB commit (PATCH p50 ~11 ms instead of 2.5-4.5 ms, ingest commits only as
large as the clients' concurrency)."""

DEFAULT_DB = "otel-feedback.duckdb"

MIN_MEMORY_BYTES = 16 * 10**6
"""The least ``OTEL_FEEDBACK_MEMORY_LIMIT`` and ``OTEL_FEEDBACK_MEMORY_TARGET`` may be: DuckDB needs a few MB to open
the file and a few more for any append or query."""


def _parse_int(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", re.I)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_UNITS["tib"] = 2**40


def parse_size(text: str) -> int:
    """Bytes in a size as DuckDB reads it (``512MB`` = 512,000,000; ``512MiB`` = 536,870,912); ValueError if
    ``text`` is not one."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Resolved settings. Build with :meth:`Settings.load`; every field has an env var above."""

    db: str = DEFAULT_DB
    host: str = "127.0.0.1"
    grpc_port: int = 4317
    http_port: int = 4318
    url: str | None = None
    queue_rows: int = 200_000
    commit_rows: int = 50_000
    max_body_bytes: int = 64 * 1024 * 1024
    max_attribute_bytes: int = 1024 * 1024
    feedback_events: tuple[str, ...] = ("user_feedback", "feedback")
    max_comment_bytes: int = 16 * 1024
    max_patch_keys: int = 128
    strict: bool = False
    config: str | None = None
    cors_origins: tuple[str, ...] = ()
    query_max_rows: int = 10_000
    query_timeout_ms: int = 30_000
    forward_to: str | None = None
    memory_limit: str = "512MB"
    memory_target: str = "96MB"
    checkpoint_threshold: str = "24MB"
    idle_cache: str = "16MB"
    threads: int = 0
    compiled_decoder: bool = True
    journal: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``overrides`` (``None`` means "not given"), then ``env``, then defaults."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            given = overrides.pop(f.name, None)
            if given is not None:
                values[f.name] = given
                continue
            var = f"OTEL_FEEDBACK_{f.name.upper()}"
            raw = env.get(var)
            if raw is None:
                continue
            default = f.default
            if isinstance(default, bool):
                values[f.name] = _parse_bool(var, raw)
            elif isinstance(default, int):
                values[f.name] = _parse_int(var, raw, 0)
            elif isinstance(default, tuple):
                values[f.name] = _parse_list(raw)
            else:
                values[f.name] = raw or None if f.name in ("url", "config", "forward_to") else raw
        if overrides:
            raise TypeError(f"unknown settings: {', '.join(sorted(overrides))}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the variable of the first bad value."""
        for name in ("grpc_port", "http_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"OTEL_FEEDBACK_{name.upper()} must be a port 0-65535, got {port}")
        for name in (
            "queue_rows",
            "commit_rows",
            "max_body_bytes",
            "max_attribute_bytes",
            "max_comment_bytes",
            "max_patch_keys",
            "query_max_rows",
            "query_timeout_ms",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"OTEL_FEEDBACK_{name.upper()} must be >= 1, got {getattr(self, name)}")
        if self.commit_rows > self.queue_rows:
            raise ConfigError(
                f"OTEL_FEEDBACK_COMMIT_ROWS ({self.commit_rows}) must not exceed "
                f"OTEL_FEEDBACK_QUEUE_ROWS ({self.queue_rows})"
            )
        if not self.db:
            raise ConfigError("OTEL_FEEDBACK_DB must not be empty")
        for name in ("memory_limit", "memory_target", "checkpoint_threshold", "idle_cache"):
            value = getattr(self, name)
            try:
                size = parse_size(value)
            except ValueError:
                raise ConfigError(
                    f"OTEL_FEEDBACK_{name.upper()} must be a size such as 512MB or 2GB, got {value!r}"
                ) from None
            if name.startswith("memory") and size < MIN_MEMORY_BYTES:
                raise ConfigError(f"OTEL_FEEDBACK_{name.upper()} must be at least 16MB, got {value!r}")

    def duckdb_threads(self) -> int:
        """DuckDB's threads while a query runs: ``threads``, or where it is 0 the cores this process may run on."""
        if self.threads:
            return self.threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # not Linux
            return os.cpu_count() or 1

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        new = replace(self, **changes)
        new.validate()
        return new


ENV_VARS = {
    name: value
    for name, value in dict(globals()).items()
    if name.startswith("OTEL_FEEDBACK_") and isinstance(value, str)
}
"""Every environment variable this package reads (used by the docs test)."""
