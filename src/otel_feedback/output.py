"""Query results -> text formats (table, CSV, TSV, JSON, NDJSON) and export files (Parquet, CSV, JSON lines).

Shared by the CLI and the HTTP API. JSON-typed columns are embedded as JSON values (not strings) in
JSON output; times are ISO 8601; bytes are base64.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import decimal
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa

from .errors import InvalidRequest

TEXT_FORMATS = ("table", "csv", "tsv", "json", "ndjson")
FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
MAX_CELL_CHARS = 80

Rows = Iterable[Sequence[Any]]


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _json_cells(types: Sequence[str]) -> list[int]:
    return [i for i, t in enumerate(types) if t == "JSON"]


def _parse_json_cells(row: Sequence[Any], json_cols: list[int]) -> list[Any]:
    out = list(row)
    for i in json_cols:
        v = out[i]
        if isinstance(v, str):
            try:
                out[i] = orjson.loads(v)
            except orjson.JSONDecodeError:
                pass
    return out


def dumps(value: Any) -> bytes:
    """JSON bytes for any value a DuckDB query returns."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)


def iter_json_array(columns: Sequence[str], types: Sequence[str], chunks: Iterable[Rows]) -> Iterator[bytes]:
    """A JSON array of objects, produced piece by piece."""
    json_cols = _json_cells(types)
    first = True
    yield b"["
    for chunk in chunks:
        for row in chunk:
            obj = dict(zip(columns, _parse_json_cells(row, json_cols), strict=True))
            yield (b"" if first else b",\n") + dumps(obj)
            first = False
    yield b"]\n"


def iter_ndjson(columns: Sequence[str], types: Sequence[str], chunks: Iterable[Rows]) -> Iterator[bytes]:
    """One JSON object per line."""
    json_cols = _json_cells(types)
    for chunk in chunks:
        for row in chunk:
            yield dumps(dict(zip(columns, _parse_json_cells(row, json_cols), strict=True))) + b"\n"


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, int | float | decimal.Decimal):
        return str(value)
    return dumps(value).decode()


def iter_delimited(columns: Sequence[str], chunks: Iterable[Rows], delimiter: str = ",") -> Iterator[str]:
    """CSV (or TSV) with a header line."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(columns)
    yield buf.getvalue()
    for chunk in chunks:
        buf.seek(0)
        buf.truncate()
        writer.writerows([_cell_text(v) for v in row] for row in chunk)
        yield buf.getvalue()


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A readable fixed-width table; long cells are cut to 80 characters with an ellipsis."""

    def cell(v: Any) -> str:
        text = "NULL" if v is None else _cell_text(v).replace("\n", "\\n").replace("\t", " ")
        return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    out = [line, "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |", line]
    for row in cells:
        out.append("| " + " | ".join(t.ljust(w) for t, w in zip(row, widths, strict=True)) + " |")
    out.append(line)
    n = len(rows)
    out.append(f"{n} row{'s' if n != 1 else ''}")
    return "\n".join(out) + "\n"


def write_text(
    fmt: str,
    columns: Sequence[str],
    types: Sequence[str],
    chunks: Iterable[Rows],
    stream: IO[str],
) -> None:
    """Write a result to a text stream in one of :data:`TEXT_FORMATS`."""
    if fmt == "table":
        rows: list[Sequence[Any]] = [r for chunk in chunks for r in chunk]
        stream.write(render_table(columns, rows))
    elif fmt in ("csv", "tsv"):
        for piece in iter_delimited(columns, chunks, "," if fmt == "csv" else "\t"):
            stream.write(piece)
    elif fmt == "json":
        for piece in iter_json_array(columns, types, chunks):
            stream.write(piece.decode())
    elif fmt == "ndjson":
        for piece in iter_ndjson(columns, types, chunks):
            stream.write(piece.decode())
    else:
        raise InvalidRequest(f"unknown format {fmt!r}; use one of {', '.join(TEXT_FORMATS)}")


def file_format(path: str | Path, fmt: str | None = None) -> str:
    """The export format named by ``fmt`` or by the file's extension."""
    if fmt:
        if fmt not in ("parquet", "csv", "jsonl"):
            raise InvalidRequest(f"unknown export format {fmt!r}; use parquet, csv or jsonl")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise InvalidRequest(
            f"cannot tell the format of {str(path)!r} from its extension; use .parquet, .csv or .jsonl (or --format)"
        )
    return FILE_FORMATS[suffix]


def _nanos_as_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Nanosecond timestamps as ISO text (Python datetimes would lose the last three digits)."""
    cols = []
    changed = False
    for col in batch.columns:
        if pa.types.is_timestamp(col.type) and col.type.unit == "ns":
            import pyarrow.compute as pc

            col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%S")
            changed = True
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names) if changed else batch


def write_file(reader: pa.RecordBatchReader, path: str | Path, fmt: str, json_columns: Sequence[str] = ()) -> int:
    """Stream Arrow record batches into an export file; the number of rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    rows = 0
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(tmp, reader.schema, compression="zstd") as w:
                for batch in reader:
                    w.write_batch(batch)
                    rows += batch.num_rows
        elif fmt == "csv":
            import pyarrow.csv as pcsv

            with pcsv.CSVWriter(tmp, reader.schema) as w:
                for batch in reader:
                    w.write_batch(batch)
                    rows += batch.num_rows
        elif fmt == "jsonl":
            names = reader.schema.names
            json_idx = [i for i, n in enumerate(names) if n in set(json_columns)]
            with open(tmp, "wb") as f:
                for batch in reader:
                    batch = _nanos_as_text(batch)
                    for rec in batch.to_pylist():
                        values = _parse_json_cells(list(rec.values()), json_idx)
                        f.write(dumps(dict(zip(names, values, strict=True))) + b"\n")
                    rows += batch.num_rows
        else:
            raise InvalidRequest(f"unknown export format {fmt!r}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return rows
