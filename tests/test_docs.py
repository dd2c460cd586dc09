"""The README stays true: its two commands, its settings, views and commands, and its tour code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson

from otel_feedback import config
from otel_feedback.cli import cli
from otel_feedback.store.views import VIEWS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)
INTERNAL_VIEWS = {
    "span_rows",
    "feedback_targets",
    "feedback_patches_as_of",
    "feedback_patches",
    "span_feedback_as_of",
    "span_feedback",
}


def test_readme_opens_with_the_two_commands() -> None:
    (lang1, first), (lang2, second) = BLOCKS[0], BLOCKS[1]
    assert lang1 == lang2 == "sh"
    assert first.strip() == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/otel-feedback demo"
    assert second.strip() == "./scripts/test.sh"
    head = README.split("---", 1)[0]
    assert first.strip() in head and second.strip() in head


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert commands[-1] == BLOCKS[1][1].strip()
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "pip install" in script and "-e '.[test]'" in script
    assert 'if [ "$rc" -eq 5 ]' in script, "pytest's 'no tests' must not pass as green"


def test_every_setting_is_documented() -> None:
    names = [v for k, v in vars(config).items() if k.startswith("OTEL_FEEDBACK_") and isinstance(v, str)]
    assert len(names) >= 15
    missing = [n for n in names if f"`{n}`" not in README]
    assert missing == []


def test_every_user_view_is_documented() -> None:
    names = [name for name, _ in VIEWS if name not in INTERNAL_VIEWS]
    missing = [n for n in names if f"`{n}" not in README]
    assert missing == []


def test_every_command_is_documented() -> None:
    missing = [name for name in cli.commands if f"`otel-feedback {name}" not in README]
    assert missing == []


def test_the_tour_code_runs_and_its_span_and_feedback_can_be_queried(tmp_path: Path) -> None:
    python = next(body for lang, body in BLOCKS if lang == "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-c", python], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "otel_feedback",
            "query",
            "--format",
            "json",
            "SELECT name, service_name, user_feedback, user_feedback_comment, attributes->>'output.value' AS output "
            "FROM spans",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == [
        {
            "name": "answer",
            "service_name": "support-agent",
            "user_feedback": "negative",
            "user_feedback_comment": "It shipped last week",
            "output": "It ships tomorrow.",
        }
    ]
