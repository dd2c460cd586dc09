"""The benchmark command runs end to end (tiny sizes) and reports every metric; its targets are not tested here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

METRICS = {
    "ingest_raw_spans_per_s",
    "ingest_raw_export_p50_ms",
    "ingest_raw_export_p99_ms",
    "ingest_sdk_spans_per_s",
    "ingest_sdk_export_p50_ms",
    "ingest_sdk_export_p99_ms",
    "ingest_sdk_client_cpu_s_per_1000_spans",
    "ingest_sdk_cores_at_50k",
    "feedback_patch_p50_ms",
    "feedback_patch_p99_ms",
    "feedback_batch_items_per_s",
    "feedback_visible_p50_ms",
    "feedback_visible_p99_ms",
    "query_feedback_by_hour_idle_s",
    "query_worst_traces_idle_s",
    "query_feedback_by_hour_load_s",
    "query_worst_traces_load_s",
    "ingest_during_queries_spans_per_s",
    "rss_peak_ingest_mb",
    "rss_peak_mb",
    "bytes_per_span",
    "cpu_s_per_1000_spans",
    "spans_stored",
}


def test_bench_quick_reports_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--seconds",
            "1.5",
            "--spans",
            "1000",
            "--senders",
            "2",
            "--inflight",
            "1",
            "--sdk-senders",
            "1",
            "--traces-per-request",
            "10",
            "--templates",
            "1",
            "--patches",
            "10",
            "--batch-items",
            "200",
            "--visible",
            "3",
            "--load-rate",
            "500",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    metrics = doc["metrics"]
    assert set(metrics) == METRICS
    for name, m in metrics.items():
        assert isinstance(m["value"], int | float) and math.isfinite(m["value"]) and m["value"] >= 0, (name, m)
        assert m["ok"] in (True, False, None)
        assert (m["ok"] is None) == (m["target"] == ""), name
    raw = doc["raw"]
    # every acknowledged span is in the file, no more (each export carried new trace ids), none rejected
    assert raw["spans_stored"] == raw["spans_acked"] > 0
    assert raw["ingest_raw"]["errors"] == raw["ingest_sdk"]["errors"] == raw["ingest_raw"]["rejected"] == 0
    assert raw["batch"]["items"] == 200 and raw["patch"]["count"] == 10 and raw["visible"]["count"] == 3
    assert raw["queries_idle"]["feedback_by_hour"]["rows"] > 0
    assert raw["server_exit"] == 0
    assert "✓" in proc.stdout or "✗" in proc.stdout


def test_percentiles_are_nearest_rank() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        import run
    finally:
        sys.path.pop(0)
    hundred = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert (run.pct(hundred, 99), run.pct(hundred, 50), run.pct(hundred, 90)) == (99.0, 50.0, 90.0)
    assert run.pct(hundred, 100) == 100.0 and run.pct(hundred, 0) == 1.0
    thousand = [float(v) for v in range(1, 1001)]
    assert (run.pct(thousand, 99), run.pct(thousand, 50)) == (990.0, 500.0)
    assert run.pct([7.0], 99) == 7.0 and math.isnan(run.pct([], 50))
