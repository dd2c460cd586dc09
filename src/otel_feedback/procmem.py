"""Memory that ``otel-feedback serve`` hands back: the process-wide allocator settings of a process that only
serves (an app embedding :class:`~.server.Server` keeps its own).

Under sustained ingest most of the server's memory outside DuckDB was memory its allocators kept after use,
not data: request bytes, decoded columns and journal buffers are allocated and freed thousands of times a
second, in sizes of tens of KB to a few MB, on a dozen threads.

- pyarrow's default pool (mimalloc) keeps freed pages for reuse; the system allocator (glibc) is used instead,
  so that Arrow's buffers and the decoder's share one heap that is trimmed;
- glibc gives each thread that contends its own arena (up to 8 per core), each holding its own free memory:
  two are enough for a process whose heavy work runs on two cores;
- :class:`Trimmer` returns the free pages of those heaps to the system once a second (``malloc_trim``);
- blocks of 4 MB and more (an apply's combined columns, a journal batch's encoding) get pages of their own,
  handed back when freed: glibc's own threshold for that starts at 128 KB but rises to the largest block freed
  so far (up to 32 MB), after which such blocks stayed in the heap, between trims, as the peaks of RSS.

Measured with ``bench/memory.py`` (3 raw senders flat out for 15 s, back to back): peak RSS 646 -> 592 MB and
574 -> 481 MB, ingest not slower (93 k -> 102 k, 67 k -> 75 k spans/s); with DuckDB's ``memory_limit`` at 128MB,
so that DuckDB's share stays fixed, 469 -> 415 MB. The 4 MB threshold (session 10, four runs each of 20 s,
alternating): VmHWM 334-344 -> 315-325 MB, p50 270-273 -> 264-265, CPU per span the same; 1 MB cost 3-6 % of CPU
(a munmap for every decoded column), as 128-256 KB cost 15-22 % in session 8. Linux with glibc only; elsewhere
``trim`` is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
from typing import Any

_log = logging.getLogger(__name__)

M_ARENA_MAX = -8
"""``mallopt`` parameter number of glibc's arena limit (malloc.h)."""

ARENAS = 2

M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter number of glibc's mmap threshold (malloc.h); setting it also stops glibc raising it."""

MMAP_THRESHOLD = 4 << 20


def _glibc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (musl has no malloc_trim either)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def configure() -> None:
    """Process-wide: Arrow on the system allocator, at most :data:`ARENAS` glibc arenas, blocks from
    :data:`MMAP_THRESHOLD` up mapped on their own. Call before the server's threads start."""
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.system_memory_pool())
    except Exception as exc:  # a pyarrow build without it: keep its default
        _log.debug("otel-feedback: could not switch pyarrow to the system allocator: %s", exc)
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim() -> bool:
    """Return free heap pages to the system now; False where that is not possible (not glibc)."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True


class Trimmer:
    """A daemon thread that calls :func:`trim` every ``interval_s`` until :meth:`stop`."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otel-feedback-trim", daemon=True)

    def start(self) -> Trimmer:
        if _LIBC is not None:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            trim()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
