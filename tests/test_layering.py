"""Imports point one way: each module may import only modules of a lower layer (the data flow).

The layers follow how data moves: errors and plain data, then decoding and validation, then the store,
then ingest, then the receivers, then the server, then what users run. A new module must be given a layer
here, so the rule is a decision, not an accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "src" / "otel_feedback"

LAYERS: dict[str, int] = {
    "_version": 0,
    "errors": 0,
    "ids": 0,
    "procmem": 0,
    "keepout": 0,
    "model": 0,
    "_pb": 0,
    "config": 1,
    "output": 1,
    "feedback": 2,
    "decode": 2,
    "store": 3,
    "ingest": 4,
    "client": 4,
    "receiver": 5,
    "api": 5,
    "processor": 5,
    "service": 6,
    "forward": 6,
    "queryapi": 6,
    "server": 7,
    "report": 8,
    "demo": 9,
    "cli": 10,
    "__main__": 12,
    "launch": 11,
    "__init__": 11,
}


def _module_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(source: str, in_subpackage: bool) -> set[str]:
    """Top-level package modules that ``source`` imports (relative or absolute)."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("otel_feedback"):
                    parts = node.module.split(".")
                    found.add(parts[1] if len(parts) > 1 else "__init__")
                continue
            up = node.level - (1 if in_subpackage else 0)
            if up > 1:
                continue
            if in_subpackage and up == 0:
                continue  # inside the same subpackage
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "otel_feedback":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def test_every_module_has_a_layer() -> None:
    modules = {_module_of(p) for p in PKG.rglob("*.py")}
    assert modules - set(LAYERS) == set(), "give new modules a layer in tests/test_layering.py"


def test_imports_point_one_way() -> None:
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        me = _module_of(path)
        if me == "_pb":
            continue
        for other in _imports(path.read_text(), len(path.relative_to(PKG).parts) > 1):
            if other == me or other not in LAYERS:
                continue
            if LAYERS[other] >= LAYERS[me] and me != "__init__":
                wrong.append(f"{path.relative_to(PKG)} imports {other} (layer {LAYERS[other]} >= {LAYERS[me]})")
    assert wrong == []


def test_the_checker_sees_relative_and_absolute_imports() -> None:
    """The rule above is only as good as the import finder; check it on known text."""
    text = "from .. import server\nfrom ..cli import cli\nfrom . import query\nimport otel_feedback.demo\n"
    assert _imports(text, in_subpackage=True) == {"server", "cli", "demo"}
    assert _imports("from . import feedback as fb\nfrom .store import Store\n", False) == {"feedback", "store"}


def test_every_public_name_resolves_and_importing_the_package_loads_no_duckdb() -> None:
    import subprocess
    import sys

    code = (
        "import sys, otel_feedback as o\n"
        "heavy = [m for m in ('duckdb', 'pyarrow', 'grpc') if m in sys.modules]\n"
        "missing = [n for n in o.__all__ if getattr(o, n, None) is None]\n"
        "print(heavy, missing)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[] []", out.stdout + out.stderr
