"""The ``otel-feedback`` entry point. ``serve`` decides what its process keeps out (:mod:`.keepout`) before the
command line module imports pyarrow and DuckDB."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        from .keepout import install

        install()
    from .cli import cli

    cli(prog_name="otel-feedback")
