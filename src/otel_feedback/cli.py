"""The ``otel-feedback`` command: argument parsing only; the work happens in the modules it calls."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ._version import __version__
from .config import (
    OTEL_FEEDBACK_DB,
    OTEL_FEEDBACK_URL,
    Settings,
)
from .errors import ConfigError, OtelFeedbackError
from .output import TEXT_FORMATS, file_format, write_file, write_text
from .store.query import check_sql, parse_param

if TYPE_CHECKING:
    from .client import Source


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Our errors become one ``Error: ...`` line and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OtelFeedbackError, ConfigError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _read_sql(sql: str) -> str:
    if sql == "-":
        return sys.stdin.read()
    return sql


def db_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        envvar=OTEL_FEEDBACK_DB,
        default=None,
        metavar="PATH",
        help="DuckDB file. [env: OTEL_FEEDBACK_DB; default: otel-feedback.duckdb]",
    )(fn)


def source_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Where a query runs (a file, or a running server) and its bound parameters."""
    fn = click.option(
        "-p",
        "--param",
        "params",
        type=(str, str),
        multiple=True,
        metavar="NAME VALUE",
        help="Bind $NAME in the SQL to VALUE (numbers become numbers). Repeatable.",
    )(fn)
    fn = click.option(
        "--url",
        envvar=OTEL_FEEDBACK_URL,
        default=None,
        help="Query a running server at this URL instead of the file. [env: OTEL_FEEDBACK_URL]",
    )(fn)
    return db_option(fn)


def _params(pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {name.lstrip("$"): parse_param(value) for name, value in pairs}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="otel-feedback")
def cli() -> None:
    """Users' feedback and evaluators' scores next to your OpenTelemetry traces, in one DuckDB file."""


def _duckdb_note(settings: Settings) -> str:
    threads = settings.duckdb_threads()
    return (
        f"{threads} thread{'s' if threads != 1 else ''} for queries, {max(1, threads - 1)} for ingest alone "
        f"(OTEL_FEEDBACK_THREADS); memory {settings.memory_target}, up to {settings.memory_limit} for what needs more"
    )


def _decoder_note(settings: Settings) -> str:
    from .decode import COMPILED_DECODER
    from .store.seen import COMPILED as COMPILED_FILTER

    if not COMPILED_DECODER:
        note = "Python (the compiled decoder was not built: no C compiler at install? decoding is about 4x slower, ingest about half as fast)"
    elif not settings.compiled_decoder:
        note = "Python (OTEL_FEEDBACK_COMPILED_DECODER=false)"
    else:
        note = "compiled"
    if not COMPILED_FILTER:
        note += "; the span filter in Python: opening a file takes ~4 s per million spans more"
    return note


def _ack_note(settings: Settings) -> str:
    from .store.journal import journal_dir

    if not settings.journal:
        return "after each DuckDB commit (OTEL_FEEDBACK_JOURNAL=false)"
    return f"once in the journal ({journal_dir(settings.db)}, fsynced); applied to DuckDB right after"


@cli.command()
@click.argument("sql")
@source_options
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(TEXT_FORMATS),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Stop after this many rows.")
@_errors
def query(
    sql: str, db: str | None, url: str | None, params: tuple[tuple[str, str], ...], fmt: str, max_rows: int | None
) -> None:
    """Run one SQL statement against the database and print the rows.

    SQL may be "-" to read it from standard input. Tables and views: spans, traces, feedback,
    annotations, orphan_feedback, span_log, feedback_log, log_records (see the README).
    """
    sql = _read_sql(sql)
    bound = _params(params)
    with _source(db, url) as source:
        if source.store is not None:
            columns, types, chunks = source.store.stream(check_sql(sql, _ANY), bound)
            if max_rows is not None:
                chunks = _limit(chunks, max_rows)
            write_text(fmt, columns, types, chunks, sys.stdout)
            return
    from .client import query_server

    result = query_server(source.url, sql, bound, max_rows=max_rows)
    write_text(fmt, result.columns, result.types, [result.rows], sys.stdout)
    if result.truncated:
        click.echo(f"(truncated at {len(result.rows)} rows)", err=True)


def _source(db: str | None, url: str | None) -> Source:
    """The file read-only, or the server at ``url``, or the running server that holds the file
    (``client.open_source`` decides); says so on stderr when it is that server."""
    from .client import open_source

    source = open_source(db, url)
    if source.note:
        path = db or Settings.load().db
        click.echo(f"({path} is held by the server at {source.url}; asking it)", err=True)
    return source


def _limit(chunks: Any, n: int) -> Any:
    for chunk in chunks:
        if len(chunk) >= n:
            yield chunk[:n]
            return
        n -= len(chunk)
        yield chunk


def _any_statement_types() -> frozenset[Any]:
    import duckdb

    return frozenset(duckdb.StatementType.__members__.values())


_ANY = _any_statement_types()


@cli.command()
@click.argument("sql")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    help="File to write; the format follows its extension (.parquet, .csv, .jsonl).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "csv", "jsonl"]),
    default=None,
    help="Format, when the extension does not say.",
)
@source_options
@_errors
def export(
    sql: str, output: str, fmt: str | None, db: str | None, url: str | None, params: tuple[tuple[str, str], ...]
) -> None:
    """Write the result of a query to a Parquet, CSV or JSON-lines file (e.g. a dataset of bad answers)."""
    sql = _read_sql(sql)
    kind = file_format(output, fmt)
    bound = _params(params)
    with _source(db, url) as source:
        if source.store is not None:
            reader, json_cols = source.store.batches(check_sql(sql, _ANY), bound)
        else:
            from .client import arrow_from_server

            reader, json_cols = arrow_from_server(source.url, sql, bound)
        rows = write_file(reader, output, kind, json_cols)
    click.echo(f"wrote {rows} row{'s' if rows != 1 else ''} to {output} ({kind})", err=True)


@cli.command()
@db_option
@click.option(
    "--host",
    envvar="OTEL_FEEDBACK_HOST",
    default=None,
    help="Address to listen on. [env: OTEL_FEEDBACK_HOST; default: 127.0.0.1]",
)
@click.option(
    "--grpc-port",
    envvar="OTEL_FEEDBACK_GRPC_PORT",
    type=int,
    default=None,
    help="OTLP/gRPC and FeedbackService port (0: any free). [env: OTEL_FEEDBACK_GRPC_PORT; default: 4317]",
)
@click.option(
    "--http-port",
    envvar="OTEL_FEEDBACK_HTTP_PORT",
    type=int,
    default=None,
    help="OTLP/HTTP, feedback and query API port (0: any free). [env: OTEL_FEEDBACK_HTTP_PORT; default: 4318]",
)
@click.option(
    "--forward-to",
    envvar="OTEL_FEEDBACK_FORWARD_TO",
    default=None,
    metavar="URL",
    help="Also re-export everything received to this OTLP/gRPC endpoint. [env: OTEL_FEEDBACK_FORWARD_TO]",
)
@click.option(
    "--config",
    "config_path",
    envvar="OTEL_FEEDBACK_CONFIG",
    default=None,
    metavar="FILE",
    help="JSON file declaring feedback names and types. [env: OTEL_FEEDBACK_CONFIG]",
)
@click.option(
    "--strict/--no-strict",
    envvar="OTEL_FEEDBACK_STRICT",
    default=None,
    help="Refuse feedback names the config does not declare. [env: OTEL_FEEDBACK_STRICT]",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Let web pages from ORIGIN call the HTTP API (repeatable; * for any). "
    "[env: OTEL_FEEDBACK_CORS_ORIGINS, comma-separated]",
)
@_errors
def serve(
    db: str | None,
    host: str | None,
    grpc_port: int | None,
    http_port: int | None,
    forward_to: str | None,
    config_path: str | None,
    strict: bool | None,
    cors_origins: tuple[str, ...],
) -> None:
    """Receive OTLP traces and logs, and feedback, into the DuckDB file until stopped (Ctrl-C)."""
    import logging

    from .server import PortInUse, Server, dedicated_process, started

    dedicated_process()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.load(
        db=db,
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        forward_to=forward_to,
        config=config_path,
        strict=strict,
        cors_origins=cors_origins or None,
    )
    server = Server(settings)
    try:
        server.start()
    except PortInUse as exc:
        raise click.ClickException(str(exc)) from None
    started()
    click.echo(
        f"otel-feedback {__version__} writing {settings.db}\n"
        f"  OTLP/gRPC + FeedbackService  {server.grpc_target}\n"
        f"  OTLP/HTTP, feedback, query   {server.http_url}\n"
        f"  trace decoder                {_decoder_note(settings)}\n"
        f"  acknowledged                 {_ack_note(settings)}\n"
        f"  DuckDB                       {_duckdb_note(settings)}\n"
        "Ctrl-C to stop.",
    )
    sys.stdout.flush()
    server.serve_forever(announce=lambda m: click.echo(m, err=True))


@cli.command()
@db_option
@_errors
def compact(db: str | None) -> None:
    """Rewrite the DuckDB file without its free space (stop the server first).

    DuckDB reuses space freed inside the file but never gives it back; after an upgrade that rebuilt a large
    table, this shrinks the file. The original is replaced only once the copy holds every row."""
    from .store.compact import compact as run_compact

    path = Settings.load(db=db).db
    done = run_compact(path)
    click.echo(
        f"{done.path}: {done.bytes_before / 1e6:,.1f} MB -> {done.bytes_after / 1e6:,.1f} MB "
        f"({sum(done.rows.values()):,} rows in {len(done.rows)} tables)"
    )


@cli.command()
@db_option
@click.option("--grpc-port", type=int, default=None, help="OTLP/gRPC port (0: any free). [default: 4317]")
@click.option("--http-port", type=int, default=None, help="HTTP port (0: any free). [default: 4318]")
@click.option(
    "--conversations",
    type=click.IntRange(5, 10_000),
    default=40,
    show_default=True,
    help="How many support conversations to simulate.",
)
@click.option("--serve/--no-serve", "keep_serving", default=False, help="Keep the server running afterwards.")
@_errors
def demo(db: str | None, grpc_port: int | None, http_port: int | None, conversations: int, keep_serving: bool) -> None:
    """See the whole product in one command: serve, simulate an instrumented support agent with users and
    an LLM judge giving feedback, and print the report."""
    import logging

    from . import demo as _demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.load(db=db, grpc_port=grpc_port, http_port=http_port)
    _demo.run(settings, conversations=conversations, keep_serving=keep_serving, say=click.echo)


@cli.command()
@db_option
@click.option(
    "--url",
    envvar=OTEL_FEEDBACK_URL,
    default=None,
    help="Report on a running server at this URL instead of the file. [env: OTEL_FEEDBACK_URL]",
)
@click.option(
    "--since",
    metavar="WHEN",
    default=None,
    help="Only traces that started since WHEN: a duration back from now (7d, 24h, 30m, 2w) or an ISO time "
    "(UTC unless it gives an offset).",
)
@click.option("--service", metavar="NAME", default=None, help="Only traces of this service.")
@click.option(
    "--html",
    "html_path",
    metavar="FILE",
    default=None,
    help="Also write the report as one self-contained HTML page with trend charts (opens without network).",
)
@click.option(
    "--worst", type=click.IntRange(min=0), default=10, show_default=True, help="How many worst traces to list."
)
@_errors
def report(
    db: str | None, url: str | None, since: str | None, service: str | None, html_path: str | None, worst: int
) -> None:
    """Feedback rate, positive rate, mean rating, categories, per service / model / day, the worst traces
    with why they failed, and judge agreement; in the terminal and, with --html, as a page.

    Works on the file (read-only) or a running server; a file held by a running server is reported on
    through that server (found at OTEL_FEEDBACK_URL or the default port, when it says it writes that file).
    """
    from . import report as _report
    from .client import open_source

    when = _report.parse_since(since) if since else None
    with open_source(db, url) as source:
        if source.note:
            click.echo(source.note, err=True)
        data = _report.collect(source.rows, since=when, service=service, worst=worst, source=source.description)
    click.echo(_report.render_text(data), nl=False)
    if html_path:
        from pathlib import Path

        try:
            Path(html_path).write_text(_report.render_html(data), encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {html_path}: {exc.strerror}") from None
        click.echo(f"wrote {html_path}", err=True)
