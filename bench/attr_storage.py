"""Benchmark: how to store OTel span attributes in DuckDB 2.0.

Candidates (one DuckDB file each, table ``spans(id BIGINT, attrs <type>)``):

  json          JSON column.            Arrow: string column of orjson text -> ``attrs::JSON``
  variant       VARIANT column.         Arrow: string column of orjson text -> ``attrs::JSON::VARIANT``
  map_varchar   MAP(VARCHAR, VARCHAR).  Arrow: map<string,string> (values stringified in Python)
  map_variant   MAP(VARCHAR, VARIANT).  Arrow: map<string, sparse_union<...>> -> ``::MAP(VARCHAR, VARIANT)``

For each: insert throughput (batches inside explicit transactions, like a single writer),
file size after CHECKPOINT, warm query latency (median of N), and type fidelity of a set
of probe values.  A few alternative ingest paths are timed on a slice of the data.

    .venv/bin/python bench/attr_storage.py --rows 1000000

All DuckDB files live in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

# --------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "claude-haiku-4", "llama-3.1-70b", "gemini-2.0-flash"]
MODEL_W = [30, 25, 15, 10, 10, 10]
Q_MODEL = "gpt-4o-mini"
Q_TOKENS_GT = 2000
HTTP_ROUTES = ["/v1/chat", "/v1/feedback", "/api/search", "/api/users/{id}", "/health", "/api/docs/{id}"]
TOOLS = ["web_search", "calculator", "sql_query", "retriever", "code_exec"]


def make_corpus(rng: random.Random, n_words: int = 700_000) -> str:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    lw = [
        12.7,
        9.1,
        8.2,
        7.5,
        7.0,
        6.7,
        6.3,
        6.1,
        6.0,
        4.3,
        4.0,
        2.8,
        2.8,
        2.4,
        2.4,
        2.2,
        2.0,
        2.0,
        1.9,
        1.5,
        1.0,
        0.8,
        0.2,
        0.2,
        0.1,
        0.1,
    ]
    vocab = ["".join(rng.choices(letters, lw, k=rng.randint(2, 10))) for _ in range(6000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]  # Zipf-ish
    words = rng.choices(vocab, weights, k=n_words)
    punct = rng.choices([" ", " ", " ", " ", " ", " ", ", ", ". ", ".\n"], k=n_words)
    return "".join(w + p for w, p in zip(words, punct, strict=True))


class Gen:
    """Deterministic generator of attribute dicts (8-15 attributes per span)."""

    def __init__(self, seed: int = 42):
        self.rng = random.Random(seed)
        self.corpus = make_corpus(self.rng)
        self.sessions = [f"{self.rng.getrandbits(64):016x}-{i:05d}" for i in range(10_000)]
        self.users = [f"user-{i}" for i in range(2_000)]

    def text(self, lo: int, hi: int) -> str:
        n = self.rng.randint(lo, hi)
        off = self.rng.randrange(0, len(self.corpus) - n)
        return self.corpus[off : off + n]

    def one(self) -> dict[str, Any]:
        r = self.rng
        kind = r.random()
        if kind < 0.30:  # LLM span (~14 attrs, ~1-3 KB text)
            p = r.randint(50, 4000)
            c = r.randint(1, 1500)
            d: dict[str, Any] = {
                "openinference.span.kind": "LLM",
                "llm.model_name": r.choices(MODELS, MODEL_W)[0],
                "llm.provider": r.choice(["openai", "anthropic", "meta", "google"]),
                "llm.token_count.prompt": p,
                "llm.token_count.completion": c,
                "llm.token_count.total": p + c,
                "gen_ai.usage.input_tokens": p,
                "gen_ai.usage.output_tokens": c,
                "llm.invocation_parameters.temperature": r.choice([0.0, 0.2, 0.7, 1.0]),
                "input.value": self.text(800, 2000),
                "output.value": self.text(200, 1500),
                "input.mime_type": r.choice(["text/plain", "application/json"]),
                "session.id": r.choice(self.sessions),
                "llm.is_streaming": r.random() < 0.5,
            }
            x = r.random()
            if x < 0.2:
                d["gen_ai.request.stop_sequences"] = ["\n\n", "END"]
            elif x < 0.3:
                d["gen_ai.request.stop_sequences"] = []
        elif kind < 0.55:  # chain / tool / retriever span (~8-12 attrs)
            d = {
                "openinference.span.kind": r.choice(["CHAIN", "TOOL", "RETRIEVER"]),
                "input.value": "" if r.random() < 0.05 else self.text(50, 400),
                "output.value": self.text(50, 600),
                "session.id": r.choice(self.sessions),
                "tool.name": r.choice(TOOLS),
                "retrieval.documents.count": r.randint(0, 20),
                "retrieval.scores": [round(r.random(), 4) for _ in range(r.randint(0, 5))],
                "metadata.tags": r.sample(["prod", "beta", "eu", "us", "canary", "v2"], r.randint(0, 3)),
                "latency_ms": round(r.expovariate(1 / 120), 3),
            }
            if r.random() < 0.5:
                d["user.id"] = r.choice(self.users)
            if r.random() < 0.3:
                d["tool.cached"] = r.random() < 0.5
        else:  # HTTP / DB span (~8-12 attrs)
            d = {
                "http.method": r.choice(["GET", "GET", "GET", "POST", "PUT", "DELETE"]),
                "http.route": r.choice(HTTP_ROUTES),
                "http.url": f"https://api.example.com{r.choice(HTTP_ROUTES)}?q={r.getrandbits(32):x}",
                "http.status_code": r.choices([200, 201, 204, 400, 404, 500, 503], [70, 5, 5, 5, 8, 5, 2])[0],
                "http.response_content_length": r.randint(0, 200_000),
                "net.peer.port": r.choice([443, 8080, 5432]),
                "server.address": r.choice(["api.example.com", "db.internal", "cache.internal"]),
                "user_agent.original": r.choice(["python-httpx/0.27", "Mozilla/5.0", "curl/8.5.0"]),
            }
            if r.random() < 0.5:
                d["session.id"] = r.choice(self.sessions)
            if r.random() < 0.3:
                d["db.system"] = "postgresql"
                d["db.statement"] = "SELECT * FROM docs WHERE id = $1 AND tenant = $2 LIMIT " + str(r.randint(1, 99))
            if r.random() < 0.2:
                d["http.request.resend_count"] = r.randint(1, 3)
            d["error"] = d["http.status_code"] >= 500
        return d

    def batch(self, n: int) -> list[dict[str, Any]]:
        return [self.one() for _ in range(n)]


def probes() -> list[tuple[str, dict[str, Any]]]:
    """Values whose round trip we check (name, attrs)."""
    return [
        ("int 3", {"v": 3}),
        ("float 3.0", {"v": 3.0}),
        ("float 0.1", {"v": 0.1}),
        ("bool True", {"v": True}),
        ("bool False", {"v": False}),
        ("str list ['a','b']", {"v": ["a", "b"]}),
        ("int list [1,2]", {"v": [1, 2]}),
        ("float list [1.0,2.5]", {"v": [1.0, 2.5]}),
        ("bool list", {"v": [True, False]}),
        ("empty str ''", {"v": ""}),
        ("empty list []", {"v": []}),
        ("negative int -7", {"v": -7}),
        ("int 2^53+1", {"v": 2**53 + 1}),
        ("int64 max", {"v": 2**63 - 1}),
        ("int64 min", {"v": -(2**63)}),
        ("uint64 max (not OTel)", {"v": 2**64 - 1}),
        ("float NaN", {"v": math.nan}),
        ("float +Inf", {"v": math.inf}),
        ("float 1e300", {"v": 1e300}),
        ("nested object (not OTel)", {"v": {"a": {"b": 1}}}),
        ("unicode/quotes/newline", {"v": 'ünï "q" \\ \n🚀'}),
        ("NUL char in str", {"v": "a\x00b"}),
        ("str that looks like int '3'", {"v": "3"}),
        ("str 'true'", {"v": "true"}),
        ("dotted + empty keys", {"a.b.c": 1, "": "empty-key"}),
    ]


def same(a: Any, b: Any) -> bool:
    """Strict equality including Python types (bool is not int, int is not float)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


# --------------------------------------------------------------------------------------
# encoders: list[dict] -> pyarrow Table(id, attrs)
# --------------------------------------------------------------------------------------


def _dumps(d: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(d)
    except orjson.JSONEncodeError:  # > 64-bit ints: fall back to stdlib (emits them verbatim)
        import json

        return json.dumps(d, allow_nan=True, separators=(",", ":")).encode()


def enc_json_text(ids: pa.Array, rows: list[dict[str, Any]]) -> pa.Table:
    # orjson bytes -> binary array -> zero-copy view as utf8 (no .decode() per row)
    arr = pa.array([_dumps(d) for d in rows], type=pa.binary()).view(pa.string())
    return pa.table({"id": ids, "attrs": arr})


def _str_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()  # lists / dicts -> JSON text


def enc_map_varchar(ids: pa.Array, rows: list[dict[str, Any]]) -> pa.Table:
    offsets = [0]
    keys: list[str] = []
    vals: list[str] = []
    for d in rows:
        keys.extend(d.keys())
        vals.extend(_str_value(v) for v in d.values())
        offsets.append(len(keys))
    m = pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(keys, pa.string()), pa.array(vals, pa.string()))
    return pa.table({"id": ids, "attrs": m})


# sparse union member order; codes are indices into this list
UNION_FIELDS = [
    ("s", pa.string()),
    ("b", pa.bool_()),
    ("i", pa.int64()),
    ("d", pa.float64()),
    ("ls", pa.list_(pa.string())),
    ("lb", pa.list_(pa.bool_())),
    ("li", pa.list_(pa.int64())),
    ("ld", pa.list_(pa.float64())),
]
_U_S, _U_B, _U_I, _U_D, _U_LS, _U_LB, _U_LI, _U_LD = range(8)


def _code(v: Any) -> int:
    t = type(v)
    if t is str:
        return _U_S
    if t is bool:
        return _U_B
    if t is int:
        return _U_I if -(2**63) <= v < 2**63 else _U_S  # out-of-range ints: stored as text (lossy)
    if t is float:
        return _U_D
    if t is list:
        if not v:
            return _U_LS
        e = type(v[0])
        return {str: _U_LS, bool: _U_LB, int: _U_LI, float: _U_LD}.get(e, _U_LS)
    return _U_S  # dicts etc. -> JSON text (lossy)


def _fix(code: int, v: Any) -> Any:
    if code == _U_S and not isinstance(v, str):
        return orjson.dumps(v).decode() if not isinstance(v, int) else str(v)
    if code == _U_LS and v and not isinstance(v[0], str):
        return [orjson.dumps(x).decode() for x in v]
    return v


def enc_map_union(ids: pa.Array, rows: list[dict[str, Any]]) -> pa.Table:
    offsets = [0]
    keys: list[str] = []
    vals: list[Any] = []
    for d in rows:
        keys.extend(d.keys())
        vals.extend(d.values())
        offsets.append(len(keys))
    codes = [_code(v) for v in vals]
    code_arr = pa.array(codes, pa.int8())
    per: list[list[Any]] = [[] for _ in UNION_FIELDS]
    for c, v in zip(codes, vals, strict=True):
        per[c].append(v)
    per[_U_S] = [_fix(_U_S, v) for v in per[_U_S]]
    per[_U_LS] = [_fix(_U_LS, v) for v in per[_U_LS]]
    children = []
    for k, (_name, typ) in enumerate(UNION_FIELDS):
        dense = pa.array(per[k], type=typ)
        mask = pc.equal(code_arr, k)
        # index into the dense child for matching slots, null elsewhere -> full-length sparse child
        idx = pc.subtract(pc.cumulative_sum(mask.cast(pa.int64())), 1)
        children.append(dense.take(pc.if_else(mask, idx, pa.scalar(None, pa.int64()))))
    u = pa.UnionArray.from_sparse(code_arr, children, [f for f, _ in UNION_FIELDS])
    m = pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(keys, pa.string()), u)
    return pa.table({"id": ids, "attrs": m})


# --------------------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------------------

J = "attrs"  # column name


CANDIDATES: dict[str, dict[str, Any]] = {
    "json": {
        "ddl": "JSON",
        "encode": enc_json_text,
        "insert": "INSERT INTO spans SELECT id, attrs::JSON FROM batch",
        "q1": f"SELECT count(*) FROM spans WHERE {J}->>'llm.model_name' = '{Q_MODEL}'",
        "q2": f"SELECT count(*) FROM spans WHERE ({J}->'gen_ai.usage.input_tokens')::BIGINT > {Q_TOKENS_GT}",
        "q3": f"SELECT {J}->>'llm.model_name' AS m, count(*) FROM spans GROUP BY ALL",
        "q3b": f"SELECT {J}->>'session.id' AS s, count(*) FROM spans GROUP BY ALL",
        "q4": f"SELECT sum(({J}->'llm.token_count.total')::BIGINT) FROM spans",
        "decode": lambda v: orjson.loads(v),
    },
    "variant": {
        "ddl": "VARIANT",
        "encode": enc_json_text,
        "insert": "INSERT INTO spans SELECT id, attrs::JSON::VARIANT FROM batch",
        "q1": f"SELECT count(*) FROM spans WHERE {J}['llm.model_name']::VARCHAR = '{Q_MODEL}'",
        "q2": f"SELECT count(*) FROM spans WHERE {J}['gen_ai.usage.input_tokens']::BIGINT > {Q_TOKENS_GT}",
        "q3": f"SELECT {J}['llm.model_name']::VARCHAR AS m, count(*) FROM spans GROUP BY ALL",
        "q3b": f"SELECT {J}['session.id']::VARCHAR AS s, count(*) FROM spans GROUP BY ALL",
        "q4": f"SELECT sum({J}['llm.token_count.total']::BIGINT) FROM spans",
        "decode": lambda v: v,
    },
    "map_varchar": {
        "ddl": "MAP(VARCHAR, VARCHAR)",
        "encode": enc_map_varchar,
        "insert": "INSERT INTO spans SELECT id, attrs FROM batch",
        "q1": f"SELECT count(*) FROM spans WHERE {J}['llm.model_name'] = '{Q_MODEL}'",
        "q2": f"SELECT count(*) FROM spans WHERE TRY_CAST({J}['gen_ai.usage.input_tokens'] AS BIGINT) > {Q_TOKENS_GT}",
        "q3": f"SELECT {J}['llm.model_name'] AS m, count(*) FROM spans GROUP BY ALL",
        "q3b": f"SELECT {J}['session.id'] AS s, count(*) FROM spans GROUP BY ALL",
        "q4": f"SELECT sum(TRY_CAST({J}['llm.token_count.total'] AS BIGINT)) FROM spans",
        "decode": lambda v: v,
    },
    "map_variant": {
        "ddl": "MAP(VARCHAR, VARIANT)",
        "encode": enc_map_union,
        "insert": "INSERT INTO spans SELECT id, attrs::MAP(VARCHAR, VARIANT) FROM batch",
        "q1": f"SELECT count(*) FROM spans WHERE {J}['llm.model_name']::VARCHAR = '{Q_MODEL}'",
        "q2": f"SELECT count(*) FROM spans WHERE {J}['gen_ai.usage.input_tokens']::BIGINT > {Q_TOKENS_GT}",
        "q3": f"SELECT {J}['llm.model_name']::VARCHAR AS m, count(*) FROM spans GROUP BY ALL",
        "q3b": f"SELECT {J}['session.id']::VARCHAR AS s, count(*) FROM spans GROUP BY ALL",
        "q4": f"SELECT sum({J}['llm.token_count.total']::BIGINT) FROM spans",
        "decode": lambda v: v,
    },
}

# Alternative ingest paths, timed on a slice only: (label, column type, encoder, INSERT sql, setup sql).
# Rates include the final CHECKPOINT so that deferring checkpoints is not a free lunch.
BIG_WAL = "SET checkpoint_threshold = '4GB'"
_ins = {c: CANDIDATES[c]["insert"] for c in CANDIDATES}


def enc_json_ext(ids: pa.Array, rows: list[dict[str, Any]]) -> pa.Table:
    storage = enc_json_text(ids, rows)["attrs"].combine_chunks()
    return pa.table({"id": ids, "attrs": pa.ExtensionArray.from_storage(pa.json_(), storage)})


ALT_INGEST: list[tuple[str, str, Callable[..., pa.Table], str, str]] = [
    ("json: baseline (same as main run)", "JSON", enc_json_text, _ins["json"], ""),
    (
        "json: Arrow pa.json_() extension column, no cast",
        "JSON",
        enc_json_ext,
        "INSERT INTO spans SELECT id, attrs FROM batch",
        "",
    ),
    ("json: baseline + checkpoint_threshold=4GB (one CHECKPOINT at end)", "JSON", enc_json_text, _ins["json"], BIG_WAL),
    ("variant: baseline (same as main run)", "VARIANT", enc_json_text, _ins["variant"], ""),
    (
        "variant: baseline + checkpoint_threshold=4GB (one CHECKPOINT at end)",
        "VARIANT",
        enc_json_text,
        _ins["variant"],
        BIG_WAL,
    ),
    (
        "variant: pa.json_() column -> attrs::VARIANT",
        "VARIANT",
        enc_json_ext,
        "INSERT INTO spans SELECT id, attrs::VARIANT FROM batch",
        "",
    ),
    (
        "variant: WRONG - VARCHAR text -> ::VARIANT stores one string",
        "VARIANT",
        enc_json_text,
        "INSERT INTO spans SELECT id, attrs::VARIANT FROM batch",
        "",
    ),
    (
        "variant: Arrow map<string,sparse_union> -> ::MAP(VARCHAR,VARIANT)::JSON::VARIANT",
        "VARIANT",
        enc_map_union,
        "INSERT INTO spans SELECT id, attrs::MAP(VARCHAR, VARIANT)::JSON::VARIANT FROM batch",
        "",
    ),
    ("map_variant: baseline (same as main run)", "MAP(VARCHAR, VARIANT)", enc_map_union, _ins["map_variant"], ""),
    (
        "map_variant: from JSON text via map_from_entries(list_transform(...))",
        "MAP(VARCHAR, VARIANT)",
        enc_json_text,
        "INSERT INTO spans SELECT id, map_from_entries(list_transform(map_entries(attrs::JSON::MAP(VARCHAR, JSON)),"
        " lambda e: {'key': e.key, 'value': e.value::VARIANT})) FROM batch",
        "",
    ),
    ("map_varchar: baseline (same as main run)", "MAP(VARCHAR, VARCHAR)", enc_map_varchar, _ins["map_varchar"], ""),
    (
        "map_varchar: from JSON text via ::JSON::MAP(VARCHAR, VARCHAR)",
        "MAP(VARCHAR, VARCHAR)",
        enc_json_text,
        "INSERT INTO spans SELECT id, attrs::JSON::MAP(VARCHAR, VARCHAR) FROM batch",
        "",
    ),
]


# --------------------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------------------


def median_time(con: duckdb.DuckDBPyConnection, sql: str, reps: int) -> tuple[float, Any]:
    res = con.sql(sql).fetchall()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = con.sql(sql).fetchall()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), res


def load(
    con: duckdb.DuckDBPyConnection,
    insert_sql: str,
    encode: Callable[..., pa.Table],
    batches: Iterable[tuple[pa.Array, list[dict[str, Any]]]],
) -> tuple[float, float]:
    """Returns (encode_seconds, insert_seconds).  Each batch = one explicit transaction."""
    t_enc = t_ins = 0.0
    for ids, rows in batches:
        t0 = time.perf_counter()
        batch = encode(ids, rows)
        t1 = time.perf_counter()
        con.register("batch", batch)
        con.execute("BEGIN TRANSACTION")
        con.execute(insert_sql)
        con.execute("COMMIT")
        con.unregister("batch")
        t2 = time.perf_counter()
        t_enc += t1 - t0
        t_ins += t2 - t1
    return t_enc, t_ins


def fmt_rate(n: int, s: float) -> str:
    return f"{n / s:,.0f}" if s > 0 else "-"


def storage_summary(con: duckdb.DuckDBPyConnection) -> str:
    rg = con.sql(
        "SELECT row_group_id, count(DISTINCT column_path) FROM pragma_storage_info('spans') "
        "WHERE column_name = 'attrs' GROUP BY ALL ORDER BY 1"
    ).fetchall()
    comp = con.sql(
        "SELECT DISTINCT segment_type || ':' || compression FROM pragma_storage_info('spans') WHERE column_name = 'attrs'"
    ).fetchall()
    return (
        f"{len(rg)} row groups, storage column paths per row group: {sorted({r[1] for r in rg})}; "
        f"{len(comp)} distinct segment type:compression pairs"
    )


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000, help="rows per INSERT transaction")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per query (median reported)")
    ap.add_argument("--alt-rows", type=int, default=200_000, help="rows used for alternative ingest paths (0=skip)")
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated subset")
    ap.add_argument("--threads", type=int, default=0, help="DuckDB threads (0 = default)")
    ap.add_argument("--tmpdir", default=None, help="parent dir for the temp DuckDB files")
    args = ap.parse_args()

    print(
        f"duckdb {duckdb.__version__}, pyarrow {pa.__version__}, python {sys.version.split()[0]}, "
        f"cpus {os.cpu_count()}, rows {args.rows:,}, batch {args.batch:,}",
        flush=True,
    )
    t_start = time.perf_counter()

    # ---- data (generated once, same for every candidate) ----
    t0 = time.perf_counter()
    gen = Gen(42)
    rows = gen.batch(args.rows)
    ids = pa.array(range(args.rows), pa.int64())
    n_attrs = sum(len(d) for d in rows)
    json_bytes = sum(len(orjson.dumps(d)) for d in rows[:: max(1, args.rows // 20_000)]) * max(1, args.rows // 20_000)
    exp_q1 = sum(1 for d in rows if d.get("llm.model_name") == Q_MODEL)
    exp_q2 = sum(1 for d in rows if d.get("gen_ai.usage.input_tokens", -1) > Q_TOKENS_GT)
    exp_q3 = len({d.get("llm.model_name") for d in rows})
    exp_q3b = len({d.get("session.id") for d in rows})
    exp_q4 = sum(d.get("llm.token_count.total", 0) for d in rows)
    print(
        f"generated {args.rows:,} spans, {n_attrs / args.rows:.1f} attrs/span, ~{json_bytes / args.rows:,.0f} "
        f"JSON bytes/span in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    def batches(n: int | None = None) -> Iterable[tuple[pa.Array, list[dict[str, Any]]]]:
        n = args.rows if n is None else min(n, args.rows)
        for s in range(0, n, args.batch):
            e = min(s + args.batch, n)
            yield ids[s:e], rows[s:e]

    q5_lo = args.rows // 2
    q5_rows = rows[q5_lo : q5_lo + 100]
    probe_list = probes()

    tmp = tempfile.mkdtemp(prefix="attr_storage_", dir=args.tmpdir)
    results: dict[str, dict[str, Any]] = {}
    fidelity: dict[str, dict[str, str]] = {}
    alt: list[tuple[str, int, float, float, float]] = []
    try:
        for name in [c.strip() for c in args.candidates.split(",") if c.strip()]:
            cand = CANDIDATES[name]
            path = os.path.join(tmp, f"{name}.duckdb")
            con = duckdb.connect(path)
            if args.threads:
                con.execute(f"SET threads = {args.threads}")
            con.execute(f"CREATE TABLE spans (id BIGINT, attrs {cand['ddl']})")
            gc.collect()
            t_enc, t_ins = load(con, cand["insert"], cand["encode"], batches())
            t0 = time.perf_counter()
            con.execute("CHECKPOINT")
            t_ckpt = time.perf_counter() - t0
            con.close()
            size = os.path.getsize(path)
            wal = path + ".wal"
            assert not os.path.exists(wal) or os.path.getsize(wal) == 0

            con = duckdb.connect(path)
            if args.threads:
                con.execute(f"SET threads = {args.threads}")
            ds = con.execute("PRAGMA database_size").fetchall()[0]  # (name, size, block_size, total, used, free, ...)
            used_bytes = int(ds[2]) * int(ds[4])
            storage = storage_summary(con)
            r: dict[str, Any] = {
                "encode_s": t_enc,
                "insert_s": t_ins,
                "ckpt_s": t_ckpt,
                "file": size,
                "used": used_bytes,
                "storage": storage,
            }
            print(
                f"\n[{name}] {cand['ddl']}: encode {t_enc:.1f}s, insert {t_ins:.1f}s "
                f"({fmt_rate(args.rows, t_ins)} rows/s; incl. encode {fmt_rate(args.rows, t_ins + t_enc)}), "
                f"final checkpoint {t_ckpt:.1f}s, file {size / 1e6:.1f} MB = {size / args.rows:.0f} B/row "
                f"(used blocks {used_bytes / args.rows:.0f} B/row); {storage}",
                flush=True,
            )

            for q, exp in (("q1", exp_q1), ("q2", exp_q2), ("q3", exp_q3), ("q3b", exp_q3b), ("q4", exp_q4)):
                t, res = median_time(con, cand[q], args.reps)
                got = len(res) if q in ("q3", "q3b") else res[0][0]
                ok = "ok" if got == exp else f"MISMATCH got {got} expected {exp}"
                r[q] = t
                print(f"  {q}: {t * 1000:8.1f} ms  [{ok}]  {cand[q]}", flush=True)

            q5 = f"SELECT id, attrs FROM spans WHERE id BETWEEN {q5_lo} AND {q5_lo + 99} ORDER BY id"
            dec = cand["decode"]
            ts = []
            for i in range(args.reps + 1):
                t0 = time.perf_counter()
                got5 = [dec(a) for _, a in con.sql(q5).fetchall()]
                if i:
                    ts.append(time.perf_counter() - t0)
            r["q5"] = statistics.median(ts)
            n_same = sum(same(a, b) for a, b in zip(q5_rows, got5, strict=True))
            r["q5_exact"] = n_same
            print(
                f"  q5: {r['q5'] * 1000:8.1f} ms  [{n_same}/100 rows round-trip with identical Python types]",
                flush=True,
            )

            # fidelity probes: separate small table in the same file
            con.execute(f"CREATE TABLE probe (id BIGINT, attrs {cand['ddl']})")
            fid: dict[str, str] = {}
            for i, (pname, pd) in enumerate(probe_list):
                try:
                    load(
                        con,
                        cand["insert"].replace("spans", "probe"),
                        cand["encode"],
                        [(pa.array([i], pa.int64()), [pd])],
                    )
                    back = con.execute(f"SELECT attrs FROM probe WHERE id = {i}").fetchall()[0][0]
                    back = dec(back)
                    fid[pname] = "ok" if same(pd, back) else f"-> {back!r}"[:60]
                except Exception as e:
                    fid[pname] = f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:50]}"
            fidelity[name] = fid
            con.close()
            os.remove(path)
            results[name] = r

        # ---- alternative ingest paths (insert speed only, on a slice) ----
        if args.alt_rows:
            n_alt = min(args.alt_rows, args.rows)
            for label, ddl, encode, sql, setup in ALT_INGEST:
                path = os.path.join(tmp, "alt.duckdb")
                con = duckdb.connect(path)
                if args.threads:
                    con.execute(f"SET threads = {args.threads}")
                if setup:
                    con.execute(setup)
                con.execute(f"CREATE TABLE spans (id BIGINT, attrs {ddl})")
                try:
                    gc.collect()
                    t_enc, t_ins = load(con, sql, encode, batches(n_alt))
                    t0 = time.perf_counter()
                    con.execute("CHECKPOINT")
                    t_ck = time.perf_counter() - t0
                    alt.append((label, n_alt, t_enc, t_ins, t_ck))
                    print(
                        f"[alt] {label}: encode {fmt_rate(n_alt, t_enc)} rows/s, insert {fmt_rate(n_alt, t_ins)} rows/s,"
                        f" final checkpoint {t_ck:.1f}s -> {fmt_rate(n_alt, t_ins + t_ck)} rows/s",
                        flush=True,
                    )
                except Exception as e:
                    print(f"[alt] {label}: ERROR {e}", flush=True)
                con.close()
                for f in (path, path + ".wal"):
                    if os.path.exists(f):
                        os.remove(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # ---- summary ----
    n = args.rows
    print(f"\n## Results ({n:,} rows, batch {args.batch:,}, median of {args.reps} warm runs)\n")
    hdr = (
        "| candidate | encode in Python rows/s | INSERT from Arrow rows/s | encode+INSERT rows/s | final CHECKPOINT s "
        "| file B/row | q1 eq ms | q2 range ms | q3 group(model) ms | q3b group(session) ms | q4 sum ms "
        "| q5 100 rows ms | q5 exact types |"
    )
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for name, r in results.items():
        print(
            f"| {name} ({CANDIDATES[name]['ddl']}) | {fmt_rate(n, r['encode_s'])} | {fmt_rate(n, r['insert_s'])} "
            f"| {fmt_rate(n, r['encode_s'] + r['insert_s'])} | {r['ckpt_s']:.1f} | {r['file'] / n:,.0f} "
            f"| {r['q1'] * 1e3:.0f} | {r['q2'] * 1e3:.0f} | {r['q3'] * 1e3:.0f} | {r['q3b'] * 1e3:.0f} "
            f"| {r['q4'] * 1e3:.0f} | {r['q5'] * 1e3:.1f} | {r['q5_exact']}/100 |"
        )
    if alt:
        print(f"\nAlternative ingest paths ({alt[0][1]:,} rows):\n")
        print("| path | encode in Python rows/s | INSERT rows/s | final CHECKPOINT s | INSERT+CHECKPOINT rows/s |")
        print("|---|---|---|---|---|")
        for label, na, te, ti, tc in alt:
            print(f"| {label} | {fmt_rate(na, te)} | {fmt_rate(na, ti)} | {tc:.1f} | {fmt_rate(na, ti + tc)} |")
    if fidelity:
        names = list(fidelity)
        print("\nType fidelity (value -> what comes back in Python; ok = same value and type):\n")
        print("| probe | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for pname, _ in probe_list:
            print(f"| {pname} | " + " | ".join(fidelity[c][pname].replace("|", "\\|") for c in names) + " |")
    print(f"\ntotal runtime {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
