"""Time (and optionally profile) the ingest steps in one process, without gRPC: parse, decode, DuckDB append.

    .venv/bin/python bench/profile_decode.py [--requests 40] [--profile]

Uses the same LLM-app request shape as ``bench/run.py``. Prints spans/s for each step on one core.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import MAGIC, Workload, encode_request


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--traces-per-request", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile the decode step and print the top entries")
    args = ap.parse_args()

    import pyarrow as pa
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from otel_feedback.decode import COMPILED_DECODER, decode_traces, decode_traces_bytes
    from otel_feedback.store import Store

    work = Workload(1, time.time_ns())
    rng = random.Random(1)
    raws = []
    for i in range(args.requests):
        raw = encode_request(work.traces(args.traces_per_request), i % 4, rng)
        raws.append(raw.replace(MAGIC, bytes((0xA5, 1)) + i.to_bytes(4, "big")))
    t0 = time.process_time()
    reqs = [ExportTraceServiceRequest.FromString(r) for r in raws]
    t_parse = time.process_time() - t0
    n = sum(len(ss.spans) for r in reqs for rs in r.resource_spans for ss in rs.scope_spans)
    size = sum(map(len, raws))
    print(f"{args.requests} requests, {n:,} spans, {size / n:,.0f} protobuf bytes/span")
    print(f"parse   {n / t_parse:12,.0f} spans/s")

    decode_traces(reqs[0])  # warm
    best = float("inf")
    for _ in range(args.repeat):  # CPU time, best of N: the machine is shared, wall time is noise
        t0 = time.process_time()
        tables = [decode_traces(r).table for r in reqs]
        best = min(best, time.process_time() - t0)
    print(f"decode  {n / best:12,.0f} spans/s  ({best / n * 1e6:.1f} us/span CPU, best of {args.repeat}; Python)")
    if COMPILED_DECODER:
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.process_time()
            compiled = [decode_traces_bytes(r) for r in raws]
            best = min(best, time.process_time() - t0)
        assert all(d is not None for d in compiled), "the compiled decoder declined the workload"
        tables = [d.table for d in compiled]
        print(
            f"decode  {n / best:12,.0f} spans/s  ({best / n * 1e6:.1f} us/span CPU, best of {args.repeat}; "
            "compiled, from the bytes: parse included)"
        )

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "p.duckdb")
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, len(tables), 10):
                store.append({"span_log": pa.concat_tables(tables[i : i + 10])}, timeout=120)
            t_app, c_app = time.perf_counter() - t0, time.process_time() - c0
            print(
                f"append  {n / t_app:12,.0f} spans/s  ({c_app / n * 1e6:.1f} us/span CPU incl. DuckDB's threads; "
                "10 requests per commit)"
            )
        finally:
            store.close()

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for r in reqs:
            decode_traces(r)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
