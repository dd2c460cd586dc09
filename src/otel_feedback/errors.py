"""Every error otel-feedback raises on purpose, each marked retryable or permanent where it is defined.

Transports map these to status codes in exactly one function each (``receiver.grpc_status``,
``api.http_status``); nothing else decides whether a client should retry.
"""

from __future__ import annotations


class OtelFeedbackError(Exception):
    """Base class of all otel-feedback errors."""

    retryable: bool = False


class ConfigError(OtelFeedbackError, ValueError):
    """A setting has a bad value; the message names the argument or environment variable."""


class InvalidRequest(OtelFeedbackError, ValueError):
    """The request is malformed or breaks a rule; retrying the same request cannot succeed."""


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than the configured limit."""


class NotFound(OtelFeedbackError):
    """The thing named in the request does not exist."""


class QueryRejected(OtelFeedbackError):
    """The SQL is not a single read-only statement, or refers to something it may not."""


class QueryError(OtelFeedbackError):
    """The SQL was accepted but DuckDB could not run it (syntax, unknown column, bad cast...)."""


class QueryOutOfMemory(QueryError):
    """The query needed more memory than DuckDB may use (``OTEL_FEEDBACK_MEMORY_LIMIT`` for a server)."""


class QueryTimeout(OtelFeedbackError):
    """The query ran past its time limit and was interrupted."""


class SchemaError(OtelFeedbackError):
    """The database file's schema cannot be used by this version (too new, or damaged)."""


class DatabaseLocked(OtelFeedbackError):
    """Another process holds the DuckDB file open for writing (usually a running ``serve``)."""

    retryable = True


class StoreUnavailable(OtelFeedbackError):
    """The store is closed or shutting down; try again later (perhaps against a restarted server)."""

    retryable = True


class QueueFull(StoreUnavailable):
    """The writer's queue is full; the caller should back off and retry."""

    retryable = True


class WriteFailed(OtelFeedbackError):
    """DuckDB refused to write the batch (disk full, I/O error); nothing of it was committed."""

    retryable = True
