"""Which keys a log may already hold: Bloom filters of 64-bit key hashes, so that the writer looks for earlier
copies of a span (or of a feedback record) only for the few keys that may have one.

A client's retry can store a span (trace_id, span_id) or a feedback record (feedback_id) twice; the views show the
first copy. Finding it used to be a search of the whole log on every read: a point lookup in ``spans`` read
``span_log`` twice, once for the span and once for its earlier copies. The writer now keeps every copy of each key
stored more than once in small tables (``span_copies``, ``feedback_copies``: :mod:`.maintained`), and the views
look for earlier copies there. To know which keys of a batch were stored before without searching, each DuckDB
instance keeps a :class:`Seen` per log: a key whose hash is not in the filter was never stored; one whose hash is
(all new keys but about one in 10^5, plus the real repeats) is looked up in the log, in the transaction that
appends it, and its copies are written down if it has any. The filters are rebuilt from the logs at open and
never written to disk; a filter only grows, so one that learned keys of a transaction that then failed only
costs a lookup more, never a copy missed. Span keys are hashed by DuckDB (``hash(trace_id, span_id)``, at open
and for each batch), feedback ids in Python (``maintained.feedback_hashes``: a PATCH is one record, and a query
to DuckDB for its hash cost ~0.6 ms).

Sizing: 24 bits and 16 hashes per key (false positives ~1e-5 while a filter is within its capacity: at 5,000
spans an apply, one apply in 20 looks up a key for nothing, ~5 ms at 1.5 M spans); a full filter is followed by
one twice its size, which takes the new keys (a key is looked for in all of them). 3 bytes a span: a server that
started empty holds 12 MB of filters at 2.6 M spans, one that opened a file of 2.6 M spans 10 MB (the first
filter sized for the file and a quarter more). 32 bits and 7 hashes, the same false positives, took a third more. Once the filters outgrow the CPU's cache
each probe is a cache miss: 5,000 keys take ~1 ms at 2.6 M spans, and loading that file's filters 0.45-0.65 s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import duckdb
import pyarrow as pa

try:
    from .. import _seen
except ImportError:  # built without a C compiler: the same filter in Python, ~100x slower (4 us a key)
    _seen = None

COMPILED = _seen is not None

BITS_PER_KEY = 24
HASHES = 16
MIN_KEYS = 1 << 18
"""The first filter's capacity, at least (768 KB): the spans' filter of a new file."""
_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _probe_python(filters: list[bytearray], k: int, hashes: memoryview, insert: bool) -> bytes:
    """_seen.add (``insert``) or _seen.contains in Python: the same positions, the same answer."""
    out = bytearray(len(hashes))
    last = filters[-1]
    last_bits = len(last) * 8
    for i, h1 in enumerate(hashes):
        h2 = _splitmix64(h1) | 1
        for bits in filters:
            m = len(bits) * 8
            if all((bits[b >> 3] >> (b & 7)) & 1 for b in ((((h1 + j * h2) & _M64) * m) >> 64 for j in range(k))):
                out[i] = 1
                break
        if insert:
            for j in range(k):
                b = (((h1 + j * h2) & _M64) * last_bits) >> 64
                last[b >> 3] |= 1 << (b & 7)
    return bytes(out)


def _uint64_buffers(hashes: pa.Array | pa.ChunkedArray, who: str) -> Iterator[tuple[int, memoryview]]:
    """(length, bytes) of each non-empty chunk of ``hashes``; uint64 without nulls, else ValueError naming ``who``."""
    for chunk in hashes.chunks if isinstance(hashes, pa.ChunkedArray) else [hashes]:
        n = len(chunk)
        if not n:
            continue
        if chunk.type != pa.uint64() or chunk.null_count:
            raise ValueError(f"{who}: expected uint64 hashes without nulls, got {chunk.type}")
        yield n, memoryview(chunk.buffers()[1]).cast("B")[chunk.offset * 8 : (chunk.offset + n) * 8]


def _filter_for(keys: int) -> bytearray:
    """A zeroed filter for ``keys`` keys."""
    return bytearray(max(8, keys * BITS_PER_KEY // 8))


class Seen:
    """Bloom filters of the hashes of a log's keys (see the module doc). Thread-safe; one per log per instance."""

    def __init__(self, expected: int = 0, least: int = MIN_KEYS) -> None:
        capacity = max(least, expected + expected // 4)
        self._filters = [_filter_for(capacity)]
        self._room = capacity  # keys the last filter takes before the next one starts
        self.keys = 0
        """Keys added so far (repeats counted): 0 for a filter nothing was added to."""
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(len(f) for f in self._filters)

    def add(self, hashes: pa.Array | pa.ChunkedArray) -> list[int]:
        """Add ``hashes`` (uint64, no nulls) in order; the positions of those that may have been added before
        (earlier in ``hashes`` included)."""
        found: list[int] = []
        base = 0
        with self._lock:
            for n, buf in _uint64_buffers(hashes, "Seen.add"):
                done = 0
                while done < n:  # fill the last filter to its capacity, then start the next
                    if self._room <= 0:
                        capacity = len(self._filters[-1]) * 8 // BITS_PER_KEY * 2
                        self._filters.append(_filter_for(capacity))
                        self._room = capacity
                    take = min(n - done, self._room)
                    part = buf[done * 8 : (done + take) * 8]
                    if _seen is not None:
                        mask = _seen.add(self._filters, HASHES, part)
                    else:
                        mask = _probe_python(self._filters, HASHES, part.cast("Q"), True)
                    self._room -= take
                    if 1 in mask:
                        found.extend(base + done + i for i, b in enumerate(mask) if b)
                    done += take
                base += n
                self.keys += n
        return found

    def contains(self, hashes: pa.Array | pa.ChunkedArray) -> bool:
        """Whether any of ``hashes`` (uint64, no nulls) may have been added; adds nothing."""
        with self._lock:
            for _, buf in _uint64_buffers(hashes, "Seen.contains"):
                if _seen is not None:
                    mask = _seen.contains(self._filters, HASHES, buf)
                else:
                    mask = _probe_python(self._filters, HASHES, buf.cast("Q"), False)
                if 1 in mask:
                    return True
        return False

    @classmethod
    def load(
        cls,
        con: duckdb.DuckDBPyConnection,
        table: str,
        key: str,
        hashes: Callable[[pa.Array], pa.Array] | None = None,
        least: int = MIN_KEYS,
    ) -> Seen:
        """The filter of every row's ``key`` in ``table``: a SQL expression giving the hash, or the key that
        ``hashes`` hashes (as the writer hashes the rows it appends)."""
        count = int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
        seen = cls(count, least)
        if count:
            for batch in con.sql(f"SELECT {key} FROM {table}").to_arrow_reader(262_144):
                seen.add(batch.column(0) if hashes is None else hashes(batch.column(0)))
        return seen
