"""The allocator settings of a process that only serves (``procmem``), checked in a process of their own so that
the test process keeps its allocators."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")


def run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_serving_process_puts_arrow_on_the_system_allocator_and_trims() -> None:
    out = run(
        """
        import threading
        import pyarrow as pa
        from otel_feedback import procmem
        from otel_feedback.server import dedicated_process
        before = pa.default_memory_pool().backend_name
        dedicated_process()
        t = procmem.Trimmer(interval_s=0.01).start()
        names = [th.name for th in threading.enumerate()]
        t.stop()
        print(before, pa.default_memory_pool().backend_name, procmem.trim(),
              "otel-feedback-trim" in names, any(th.name == "otel-feedback-trim" for th in threading.enumerate()))
        """
    )
    before, after, trimmed, running, left = out.split()
    assert before != "system" and after == "system"
    assert (trimmed, running, left) == ("True", "True", "False")


def test_trimming_gives_freed_heap_memory_back() -> None:
    """Freed blocks that glibc keeps (below live ones, so its heap cannot shrink) leave RSS after trim()."""
    out = run(
        """
        from pathlib import Path
        from otel_feedback import procmem
        def anon():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) // 1024
        procmem.configure()
        keep, drop = [], []
        for _ in range(2_000):  # 60 KB blocks between small kept ones: the heap cannot shrink from its top
            drop.append(bytearray(60_000))
            keep.append(bytearray(600))
        del drop
        before = anon()
        procmem.trim()
        print(before, anon())
        """
    )
    before, after = map(int, out.split())
    assert before - after >= 80, (before, after)


@pytest.mark.parametrize("configured", [True, False])
def test_big_blocks_are_handed_back_when_freed(configured: bool) -> None:
    """Blocks of 4 MB and more get pages of their own: freed, they leave RSS at once, without a trim. Without the
    setting, glibc's threshold rises to the largest block freed, and the next ones stay in its heap."""
    out = run(
        f"""
        import ctypes
        from pathlib import Path
        from otel_feedback import procmem
        def anon():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) // 1024
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
        libc.free.argtypes = (ctypes.c_void_p,)
        libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
        def block(size):
            p = libc.malloc(size)
            libc.memset(p, 1, size)
            return p
        if {configured}:
            procmem.configure()
        libc.free(block(24 << 20))  # a big block freed: glibc raises its threshold past the next ones
        big, small = [], []
        for _ in range(20):  # 5 MB blocks between small kept ones: the heap cannot shrink from its top
            big.append(block(5 << 20))
            small.append(block(600))
        before = anon()
        for p in big:
            libc.free(p)
        print(before, anon())
        """
    )
    before, after = map(int, out.split())
    if configured:
        assert before - after >= 90, (before, after)
    else:  # what the setting is for: the same blocks stay
        assert before - after < 10, (before, after)
