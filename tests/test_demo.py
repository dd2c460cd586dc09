"""The README's first command: ``otel-feedback demo`` on the embedded default file shows the whole product,
and its report carries the numbers the scenario implies (computed here by hand from the scenario's rules)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson

from otel_feedback import demo

SCRIPT = Path(sys.executable).parent / "otel-feedback"


def _kappa(pairs: list[tuple[str, str]]) -> float:
    n = len(pairs)
    p_o = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    p_e = sum(first[k] * second[k] for k in first) / (n * n)
    return (p_o - p_e) / (1 - p_e)


def test_the_scenario_numbers_by_hand() -> None:
    convs = demo.scenario(40)
    assert sum(c.bad for c in convs) == 10  # every fourth answer
    exp = demo.expected_numbers(convs)
    # 8 of 40 get no thumbs (i % 5 == 4); 3 of those still rate (i = 9, 24, 39): 35 with feedback
    assert exp["traces_with_feedback"] == 35 and exp["feedback_rate"] == 0.875
    assert (exp["positive"], exp["negative"]) == (26, 9)
    assert round(exp["mean_rating"], 2) == 3.36


def test_demo_runs_on_the_default_file_and_reports_the_expected_numbers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [str(SCRIPT), "demo", "--grpc-port", "0", "--http-port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert (tmp_path / "otel-feedback.duckdb").exists()  # the embedded default, nothing else to start

    convs = demo.scenario(40)
    exp = demo.expected_numbers(convs)
    spans = sum(3 + c.uses_tool for c in convs)
    assert f"Sent {spans} spans" in out

    def line(label: str) -> str:
        m = re.search(rf"^{label}\s+(.+)$", out, re.M)
        assert m, f"no {label!r} line in:\n{out}"
        return m.group(1).strip()

    assert line("traces") == "40"
    assert line("traces with feedback") == str(exp["traces_with_feedback"])
    assert line("feedback rate") == f"{exp['feedback_rate']:.1%}"
    assert line("positive rate") == f"{exp['positive_rate']:.1%}"
    ratings = [c.rating for c in convs if c.rating is not None]
    assert line("mean rating") == f"{exp['mean_rating']:.2f} ({len(ratings)} ratings)"
    bad_with_thumbs = sum(c.bad and c.thumbs for c in convs)
    assert line("awaiting review") == str(bad_with_thumbs)
    assert f"Worst traces ({exp['negative']} with negative feedback)" in out

    pairs = [("incorrect" if c.bad else "correct", demo.judge_verdict(c)) for c in convs if c.human_label]
    agreement = sum(a == b for a, b in pairs) / len(pairs)
    m = re.search(r"^\s+correctness\s+(\d+)\s+([\d.]+)%\s+([-\d.]+)\s", out, re.M)
    assert m, out
    assert int(m.group(1)) == len(pairs)
    assert m.group(2) == f"{agreement * 100:.1f}"
    assert m.group(3) == f"{_kappa(pairs):.3f}"

    # the file holds it all and answers SQL afterwards
    q = subprocess.run(
        [str(SCRIPT), "query", "--format", "json", "SELECT traces, negative, ratings FROM feedback_summary"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert q.returncode == 0, q.stderr
    assert orjson.loads(q.stdout) == [{"traces": 40, "negative": exp["negative"], "ratings": len(ratings)}]
