"""Where the server's memory goes under sustained ingest: a timeline of RSS (anonymous and file-backed) and of
DuckDB's own accounting (``duckdb_memory()``, by tag), sampled once a second.

    .venv/bin/python bench/memory.py                       # 30 s of raw gRPC ingest, then 2 rounds of queries
    .venv/bin/python bench/memory.py --seconds 60 --env OTEL_FEEDBACK_MEMORY_LIMIT=256MB

It starts ``otel-feedback serve`` on a fresh file (as ``bench/run.py`` does), runs ``--senders`` raw senders for
``--seconds``, then the two benchmark queries ``--query-rounds`` times, and prints one line per sample:
seconds, phase, VmRSS / RssAnon / RssFile (MB), DuckDB's total and its biggest tags (MB), spans acknowledged.
DuckDB's figures are read through ``POST /v1/query`` (a small query of its own, once a second). The last line
gives the peaks; ``--json`` writes the samples.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py: the server process, the senders, the workload

_STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def status_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in _STATUS_KEYS:
            out[key] = int(rest.split()[0]) / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the ingest phase (30)")
    ap.add_argument("--senders", type=int, default=3, help="raw gRPC sender processes (3)")
    ap.add_argument("--rate", type=float, default=0.0, help="spans/s asked of all senders together (0: flat out)")
    ap.add_argument("--query-rounds", type=int, default=2, help="rounds of the two benchmark queries after (2)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra env for the server")
    ap.add_argument("--json", default="", help="write the samples here")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="otel-feedback-mem-"))
    env = {"OTEL_FEEDBACK_QUERY_TIMEOUT_MS": "300000", **dict(kv.split("=", 1) for kv in args.env)}
    server = run.ServeProcess(tmp / "bench.duckdb", tmp / "serve.log", env)
    bargs = run.parse_args(["--seconds", str(args.seconds), "--spans", "0"])
    samples: list[dict[str, Any]] = []
    try:
        b = run.Bench(bargs, server)
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.wait(1.0):
                row: dict[str, Any] = {"t": round(time.monotonic() - t0, 1), "phase": b.phase}
                try:
                    row.update(status_mb(server.pid))
                    tags, _ = b.query(
                        "SELECT tag, memory_usage_bytes / 1e6 FROM duckdb_memory() WHERE memory_usage_bytes > 0 "
                        "UNION ALL SELECT 'spilled', sum(size) / 1e6 FROM duckdb_temporary_files() HAVING sum(size) > 0"
                    )
                except Exception as exc:  # a sample missed is printed, not fatal
                    row["error"] = str(exc)[:80]
                    tags = []
                row["duckdb"] = {tag: round(mb, 1) for tag, mb in tags if tag != "spilled"}
                row["spilled"] = round(sum(mb for tag, mb in tags if tag == "spilled"), 1)
                samples.append(row)
                top = sorted(row["duckdb"].items(), key=lambda kv: -kv[1])[:3]
                print(
                    f"{row['t']:6.1f}s {row['phase']:8} rss {row.get('VmRSS', 0):6.0f} anon {row.get('RssAnon', 0):6.0f}"
                    f" file {row.get('RssFile', 0):5.0f} | duckdb {sum(row['duckdb'].values()):6.0f}: "
                    + ", ".join(f"{k} {v:.0f}" for k, v in top)
                    + (f" | spilled to <db>.tmp {row['spilled']:.0f}" if row["spilled"] else ""),
                    flush=True,
                )

        fast: list[tuple[str, float]] = []

        def sample_fast() -> None:  # VmRSS alone, 100 times a second: the peaks between the slow samples
            status = Path(f"/proc/{server.pid}/status")
            while not stop.wait(0.01):
                try:
                    line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS"))
                except (OSError, StopIteration):
                    continue
                fast.append((b.phase, int(line.split()[1]) / 1024))

        threading.Thread(target=sample, daemon=True).start()
        threading.Thread(target=sample_fast, daemon=True).start()
        b.enter("ingest")
        res = b.senders("raw", args.senders, args.seconds, 10**9, rate=args.rate, warmup=2.0)
        hwm_ingest = status_mb(server.pid)["VmHWM"]
        b.enter("queries")
        for _ in range(args.query_rounds):
            b.queries(1)
        b.enter("idle")
        time.sleep(3)
        stop.set()
        peak = status_mb(server.pid)["VmHWM"]
        duck_peak = max((sum(s["duckdb"].values()) for s in samples), default=0.0)
        quick = sorted(v for phase, v in fast[300:] if phase == "ingest")
        if quick:
            print(
                "under ingest, VmRSS at 100 Hz: "
                + ", ".join(f"p{q} {quick[min(len(quick) - 1, len(quick) * q // 100)]:.0f}" for q in (50, 90, 99))
                + f", max {quick[-1]:.0f} MB"
            )
        steady = [r for r in samples if r["phase"] == "ingest" and r["t"] > 3 and "VmRSS" in r]
        if steady:

            def med(values: list[float]) -> float:
                return sorted(values)[len(values) // 2]

            print(
                f"under ingest: VmRSS median {med([r['VmRSS'] for r in steady]):.0f} MB, max sampled "
                f"{max(r['VmRSS'] for r in steady):.0f} MB, VmHWM {hwm_ingest:.0f} MB; anonymous median "
                f"{med([r['RssAnon'] for r in steady]):.0f} MB, of which DuckDB's own accounting "
                f"{med([sum(r['duckdb'].values()) for r in steady]):.0f} MB"
            )
        print(
            f"ingest {res['spans_per_s']:,.0f} spans/s ({res['spans']:,} spans, server CPU "
            f"{1000 * res['server_cpu_s'] / max(1, res['spans']):.4f} s per 1,000); VmHWM {peak:.0f} MB; "
            f"DuckDB at most {duck_peak:.0f} MB in the samples"
        )
        b.http.close()
        server.stop()
        print("\n".join(server.summary()))
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(samples, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
