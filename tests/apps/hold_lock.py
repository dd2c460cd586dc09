"""Hold an otel-feedback DuckDB file open read-write (as a running ``otel-feedback serve`` does).

Usage: ``python hold_lock.py PATH``. Prints ``HELD <pid>`` once the file is open, then blocks until it is
killed by its PID.
"""

from __future__ import annotations

import os
import sys
import threading

from otel_feedback import Store


def main() -> None:
    store = Store(sys.argv[1])
    print(f"HELD {os.getpid()}", flush=True)
    threading.Event().wait()
    store.close()


if __name__ == "__main__":
    main()
