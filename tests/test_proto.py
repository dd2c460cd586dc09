"""The generated protobuf code is exactly what scripts/gen_proto.sh makes from proto/ (never hand-edited)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "src" / "otel_feedback" / "_pb"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "_pb"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted(p.name for p in GENERATED.iterdir() if p.suffix in (".py", ".pyi"))
    stale = [name for name in made if (out / name).read_text() != (GENERATED / name).read_text()]
    assert stale == [], f"{stale} differ from proto/: run scripts/gen_proto.sh and commit the result"


def test_the_service_is_importable_and_matches_the_proto() -> None:
    from otel_feedback._pb import feedback_pb2

    service = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"]
    assert {m.name for m in service.methods} == {"Patch", "BatchPatch"}
    text = (ROOT / "proto" / "otel_feedback" / "v1" / "feedback.proto").read_text()
    assert "rpc Patch(PatchRequest)" in text and "rpc BatchPatch(BatchPatchRequest)" in text
