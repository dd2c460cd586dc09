"""The journal: where the writer makes a write durable before DuckDB has it, so that it can answer at once.

A DuckDB commit costs about 8 ms however few rows it carries (and a one-row feedback insert at least 2.5 ms),
so acknowledging every request after its own commit kept commits as small as the clients' concurrency and
PATCH latency above 10 ms. Instead, each accepted job is appended here as one framed record, the file is
``fdatasync``ed (a fraction of a millisecond, shared by every job in the batch), and only then is the job
acknowledged. The writer applies journaled jobs to DuckDB in large transactions, recording in the same
transaction the last journal sequence number (LSN) applied (table ``_journal``). At the next read-write open,
records after that LSN are applied again, so nothing acknowledged is lost to ``kill -9``.

Layout: a directory ``<database>.journal`` of numbered files ``00000001.log``, ..., each starting with :data:`MAGIC`,
then records of a 16-byte header (LSN, payload length, CRC-32 of LSN and payload) and the payload, an Arrow IPC
stream per table of the job. A crash can leave a torn record only at the end of the newest file (it was never
acknowledged); reading stops there. Files are rotated at ``rotate_bytes`` and deleted once DuckDB has every
record in them; after a clean close the directory is removed.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import SchemaError

_log = logging.getLogger(__name__)

MAGIC = b"OTFJRNL1"
_HEADER = struct.Struct("<QII")  # lsn, payload length, crc32(lsn bytes + payload)
_TABLE = struct.Struct("<HQ")  # table name length, IPC stream length


def journal_dir(db_path: str | Path) -> Path:
    """Where the journal of the database file ``db_path`` lives."""
    return Path(f"{db_path}.journal")


def encode(tables: Mapping[str, pa.Table]) -> list[Any]:
    """A job's tables as payload parts (bytes-like objects; joined by the writer)."""
    parts: list[Any] = [struct.pack("<B", len(tables))]
    for name, table in tables.items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        buf = sink.getvalue()
        raw = name.encode()
        parts += [_TABLE.pack(len(raw), buf.size), raw, buf]
    return parts


def decode(payload: bytes | memoryview) -> dict[str, pa.Table]:
    """The tables of one record's payload (the inverse of :func:`encode`)."""
    view = memoryview(payload)
    (count,) = struct.unpack_from("<B", view, 0)
    pos = 1
    tables: dict[str, pa.Table] = {}
    for _ in range(count):
        name_len, size = _TABLE.unpack_from(view, pos)
        pos += _TABLE.size
        name = bytes(view[pos : pos + name_len]).decode()
        pos += name_len
        tables[name] = pa.ipc.open_stream(pa.py_buffer(view[pos : pos + size])).read_all()
        pos += size
    if pos != len(view):
        raise ValueError(f"journal record has {len(view) - pos} bytes after its last table")
    return tables


def _crc(lsn: int, parts: Iterable[Any]) -> int:
    """CRC-32 of the LSN and the payload, given as one or more bytes-like parts."""
    crc = zlib.crc32(struct.pack("<Q", lsn))
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


_sync = getattr(os, "fdatasync", os.fsync)
"""``fdatasync`` where the OS has it (Linux); ``fsync`` elsewhere (macOS has no ``fdatasync``)."""


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory to sync it; NTFS journals the name itself
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") and hasattr(os, "writev") else 0


def _write_all(fd: int, chunks: list[memoryview]) -> None:
    """Every byte of ``chunks``, in order, with as few system calls as the OS allows (``writev``, at most
    ``IOV_MAX`` buffers a call; a short write resumes where it stopped)."""
    chunks = [c for c in chunks if c.nbytes]
    i = 0
    while i < len(chunks):
        if not _IOV_MAX:  # no writev (Windows)
            view = chunks[i]
            n = os.write(fd, view)
        else:
            group = chunks[i : i + _IOV_MAX]
            n = os.writev(fd, group)
        while n and i < len(chunks):  # drop what was written; cut the chunk a short write ended in
            if n >= chunks[i].nbytes:
                n -= chunks[i].nbytes
                i += 1
            else:
                chunks[i] = chunks[i][n:]
                n = 0


class Journal:
    """Append (one thread), read back (at open) and trim (another thread) the journal files."""

    def __init__(self, directory: Path, *, rotate_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._closed_files: list[tuple[Path, int]] = []  # full files and their last LSN
        self._fd: int | None = None
        self._file: Path | None = None
        self._size = 0
        self._number = 0  # of the newest file
        self.last_lsn = 0
        self.bytes_written = 0

    # -- reading (at open, before any append) ---------------------------------------------------

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted((p for p in self.directory.glob("*.log") if p.stem.isdigit()), key=lambda p: int(p.stem))

    def records(self, repair: bool = True) -> Iterator[tuple[int, memoryview]]:
        """Every intact record, oldest first. A damaged record ends its file: at the end of the newest file that
        is a write a crash cut short (never acknowledged); anywhere else the file is set aside as ``.damaged``
        and an error logged, and the records after the damage are not read."""
        files = self.files()
        for i, path in enumerate(files):
            data = path.read_bytes()
            view = memoryview(data)
            if data[: len(MAGIC)] != MAGIC:
                if len(data) < len(MAGIC) and MAGIC.startswith(data) and i == len(files) - 1:
                    continue  # created, header not yet written when the process died
                raise SchemaError(f"{path} is not an otel-feedback journal file (bad header); move it away")
            pos = len(MAGIC)
            while pos < len(data):
                if pos + _HEADER.size > len(data):
                    break
                lsn, length, crc = _HEADER.unpack_from(view, pos)
                end = pos + _HEADER.size + length
                if end > len(data):
                    break
                payload = view[pos + _HEADER.size : end]
                if _crc(lsn, (payload,)) != crc:
                    break
                yield lsn, payload
                pos = end
            if pos < len(data):
                if i == len(files) - 1:
                    _log.info(
                        "otel-feedback journal: %s ends in a write cut short (%d bytes, never acknowledged)",
                        path,
                        len(data) - pos,
                    )
                elif repair:
                    damaged = path.with_suffix(".damaged")
                    _log.error(
                        "otel-feedback journal: %s is damaged at byte %d; %d bytes after it were not applied. "
                        "The file is kept as %s.",
                        path,
                        pos,
                        len(data) - pos,
                        damaged,
                    )
                    path.rename(damaged)

    # -- appending (one thread) -----------------------------------------------------------------

    def start(self, next_lsn: int) -> None:
        """Remove the files read back (their records are in DuckDB now) and begin a new file at ``next_lsn``."""
        files = self.files()
        self._number = int(files[-1].stem) if files else 0
        for path in files:
            path.unlink()
        self.last_lsn = next_lsn - 1
        self.directory.mkdir(parents=True, exist_ok=True)

    def _open(self) -> None:
        self._number += 1
        path = self.directory / f"{self._number:08d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            os.write(fd, MAGIC)
            _sync(fd)
            _fsync_dir(self.directory)  # the new file's name must survive a crash as well as its records
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._file, self._size = fd, path, len(MAGIC)

    def append(self, records: list[tuple[int, list[Any]]]) -> None:
        """Write ``(lsn, payload parts)`` records and ``fdatasync``: when this returns they survive a crash.
        On failure the file is cut back to where it was, so a later append never follows a torn record."""
        if not records:
            return
        if self._fd is None:
            self._open()
        assert self._fd is not None
        chunks: list[memoryview] = []
        for lsn, parts in records:  # written as they are (writev): no copy of the batch joined in memory
            views = [memoryview(p).cast("B") for p in parts]
            size = sum(v.nbytes for v in views)
            chunks += [memoryview(_HEADER.pack(lsn, size, _crc(lsn, views))), *views]
        total = sum(c.nbytes for c in chunks)
        start = self._size
        try:
            _write_all(self._fd, chunks)
            _sync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, start)
                _sync(self._fd)
            except OSError:
                _log.exception("otel-feedback journal: could not cut %s back after a failed write", self._file)
                self._fd = None  # never append after a torn record: the next append starts a new file
            raise
        self._size += total
        self.bytes_written += total
        self.last_lsn = records[-1][0]
        if self._size >= self.rotate_bytes:
            with self._lock:
                assert self._file is not None
                self._closed_files.append((self._file, self.last_lsn))
            os.close(self._fd)
            self._fd = None

    # -- trimming (the DuckDB writer's thread) --------------------------------------------------

    def release(self, applied_lsn: int) -> None:
        """Delete the full files whose records DuckDB has committed."""
        with self._lock:
            done = [p for p, last in self._closed_files if last <= applied_lsn]
            self._closed_files = [(p, last) for p, last in self._closed_files if last > applied_lsn]
        for path in done:
            try:
                path.unlink()
            except OSError as exc:
                _log.warning("otel-feedback journal: could not delete %s: %s", path, exc)

    def close(self, applied_lsn: int) -> None:
        """Close the file; if DuckDB has every record, remove the journal altogether."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if applied_lsn >= self.last_lsn:
            for path in self.files():
                path.unlink()
            try:
                self.directory.rmdir()
            except OSError:
                pass  # something else is in it (a .damaged file): leave it for a person to look at
        else:
            _log.warning(
                "otel-feedback journal: records %d-%d are not in the database yet; they are applied at the next open",
                applied_lsn + 1,
                self.last_lsn,
            )
