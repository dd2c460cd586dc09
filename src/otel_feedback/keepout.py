"""Modules ``otel-feedback serve`` keeps out of its process: it never uses them, and libraries it uses import
them only because they are installed.

- pandas: pyarrow imports it, when installed, on its first conversion of a Python list, only to check whether
  the values are pandas objects: 42 MB of RSS and ~300 ms on the server's first request.
- numpy: pyarrow and DuckDB import it at their own import when installed, and nothing the server does needs it
  (pyarrow and DuckDB work without it): 54 MB of RSS (35 MB anonymous, much of it OpenBLAS's buffers, and
  18 MB of mapped libraries), measured in a process that imported the server's modules and ran a query: 184 ->
  130 MB.

This module imports nothing heavy, so the ``otel-feedback`` entry point can install the refusal before anything
imports pyarrow (:mod:`.launch`).
"""

from __future__ import annotations

import sys
from typing import Any

KEPT_OUT = ("pandas", "numpy")


class Refuse:
    """An import finder that refuses the modules of :data:`KEPT_OUT` (and their submodules)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        top = name.partition(".")[0]
        if top in self.names:
            raise ModuleNotFoundError(f"otel-feedback serve keeps {top} out of its process", name=name)
        return None


def install() -> None:
    """Refuse the modules of :data:`KEPT_OUT` that are not imported yet, from now on, in this process."""
    if any(isinstance(f, Refuse) for f in sys.meta_path):
        return
    names = tuple(n for n in KEPT_OUT if n not in sys.modules)
    if names:
        sys.meta_path.insert(0, Refuse(names))
