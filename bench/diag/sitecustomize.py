"""Timing of the server's writer-thread work, for finding what a slow request waited for.

Put this directory on the server's ``PYTHONPATH`` and Python imports this module at start-up:

    .venv/bin/python bench/run.py --env PYTHONPATH=bench/diag --env OTEL_FEEDBACK_TIMING_DIR=/tmp/timing

Each checkpoint, apply (``Writer._run_jobs``) and cache maintenance (``MemoryGovernor.maintain``) of the server
is written as ``<what> <start> <end>`` (``time.time()`` seconds) to ``<dir>/events-<pid>.log``; match them
against a client's request times. It changes nothing else; its cost, a line written per event, was not measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

_DIR = os.environ.get("OTEL_FEEDBACK_TIMING_DIR")


def _wrap(cls: type, name: str, label: str, log: Any) -> None:
    original: Callable[..., Any] = getattr(cls, name)

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return original(self, *args, **kwargs)
        finally:
            log.write(f"{label} {started:.4f} {time.time():.4f}\n")

    setattr(cls, name, timed)


if _DIR:
    os.makedirs(_DIR, exist_ok=True)
    _log = open(os.path.join(_DIR, f"events-{os.getpid()}.log"), "a", buffering=1)  # noqa: SIM115 - process-long
    try:
        from otel_feedback.store import memory, writer
    except ImportError as exc:
        _log.write(f"not timed: {exc}\n")
    else:
        _wrap(writer.Writer, "_checkpoint", "checkpoint", _log)
        _wrap(writer.Writer, "_run_jobs", "apply", _log)
        _wrap(memory.MemoryGovernor, "maintain", "maintain", _log)
