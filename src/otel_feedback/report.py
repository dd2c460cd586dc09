"""``otel-feedback report``: the analysis views' answers in the terminal, and as one self-contained HTML page.

Three steps, each usable on its own:

* :func:`collect` runs the analysis views through ``run_sql(sql, params) -> list[dict]`` (a read-only file,
  a running server, or a store inside this process) and returns a :class:`ReportData`;
* :func:`render_text` prints it for a terminal;
* :func:`render_html` makes one HTML page: inline CSS and SVG charts drawn here, no script, no network.

Scoping (``since``, ``service``) reuses each view's own SQL from :mod:`otel_feedback.store.views`: the
view's body runs with ``traces`` (and ``annotations``) replaced by common table expressions holding only
the traces in scope, so the report's numbers are the views' numbers, computed on fewer traces. This also
means a report works on a file written by an older version whose installed views differ.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import InvalidRequest
from .store.views import VIEWS, WORST_TRACES_ORDER

RunSql = Callable[[str, dict[str, Any]], list[dict[str, Any]]]
"""Runs one read-only SQL statement with ``$name`` parameters; the rows as dicts."""

_VIEW_SQL = dict(VIEWS)
_CREATE = re.compile(r"\s*CREATE\s+OR\s+REPLACE\s+VIEW\s+\w+\s+AS\s+", re.I)
_WITH = re.compile(r"WITH\s+(?!RECURSIVE\b)", re.I)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.I)
_UNITS = {"s": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


# -- what the report holds ---------------------------------------------------------------------------


@dataclass
class ReportData:
    """Everything a report shows; plain values (numbers, text, naive UTC datetimes, lists and dicts)."""

    generated_at: datetime
    since: datetime | None
    service: str | None
    source: str
    summary: dict[str, Any]
    """traces, traces_with_feedback, feedback_rate, positive, negative, positive_rate, mean_rating, ratings."""
    categories: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    trend_unit: str = "day"
    """``day``, or ``hour`` when the traces in scope fall on at most two (UTC) days."""
    trend: list[dict[str, Any]] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)
    """The worst traces (``worst_traces`` view), ``evaluations`` and ``child_feedback`` as lists of dicts."""
    worst_total: int = 0
    agreement: list[dict[str, Any]] = field(default_factory=list)
    review_pending: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_since(value: str | datetime, now: datetime | None = None) -> datetime:
    """A naive UTC datetime from ``7d`` / ``24h`` / ``30m`` / ``2w`` (back from ``now``) or an ISO 8601 time
    (UTC unless it carries an offset)."""
    if isinstance(value, datetime):
        return _utc_naive(value)
    now = _utc_naive(now or datetime.now(UTC))
    m = _DURATION.match(value)
    if m:
        return now - timedelta(**{_UNITS[m.group(2).lower()]: float(m.group(1))})
    try:
        return _utc_naive(datetime.fromisoformat(value.strip()))
    except ValueError:
        raise InvalidRequest(
            f"since: expected a duration back from now (7d, 24h, 30m, 2w) or an ISO time, got {value!r}"
        ) from None


def _utc_naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo is not None else t


# -- collecting --------------------------------------------------------------------------------------


def view_body(name: str) -> str:
    """The SELECT of the analysis view ``name`` (its DDL without ``CREATE OR REPLACE VIEW ... AS``)."""
    ddl = _VIEW_SQL[name]
    m = _CREATE.match(ddl)
    if m is None:
        raise ValueError(f"view {name}: unexpected DDL shape")
    return ddl[m.end() :].strip()


def scoped(sql: str, where: str | None) -> str:
    """``sql`` with ``traces`` (and ``feedback_traces``) and ``annotations`` narrowed to the traces matching ``where`` (None: all)."""
    if not where:
        return sql
    ctes = (
        f"traces AS (SELECT * FROM main.traces WHERE {where}),\n"
        f"feedback_traces AS (SELECT * FROM main.feedback_traces WHERE {where}),\n"
        "annotations AS (SELECT * FROM main.annotations WHERE trace_id IN (SELECT trace_id FROM traces))"
    )
    m = _WITH.match(sql)
    if m:
        return f"WITH {ctes},\n{sql[m.end() :]}"
    return f"WITH {ctes}\n{sql}"


def _scope(since: datetime | None, service: str | None) -> tuple[str | None, dict[str, Any]]:
    conditions, params = [], {}
    if since is not None:
        conditions.append("start_time >= CAST($since AS TIMESTAMP)")
        params["since"] = since.isoformat(sep=" ")
    if service is not None:
        conditions.append("service_name = $service")
        params["service"] = service
    return (" AND ".join(conditions) or None), params


def collect(
    run_sql: RunSql,
    *,
    since: str | datetime | None = None,
    service: str | None = None,
    worst: int = 10,
    now: datetime | None = None,
    source: str = "",
) -> ReportData:
    """Run the analysis views for the traces that started at or after ``since`` (a datetime, ISO text, or
    a duration such as ``7d``) and belong to ``service``, and gather the report."""
    now = _utc_naive(now or datetime.now(UTC))
    since_t = parse_since(since, now) if since is not None else None
    where, params = _scope(since_t, service)

    def rows(sql: str) -> list[dict[str, Any]]:
        return [dict(r) for r in run_sql(scoped(sql, where), dict(params))]

    def view(name: str, suffix: str = "") -> list[dict[str, Any]]:
        return rows(view_body(name) + suffix)

    summary_rows = view("feedback_summary")
    summary = _numbers(summary_rows[0]) if summary_rows else _empty_summary()
    summary.pop("scope", None)
    unit = "day"
    trend = [_numbers(r) for r in view("feedback_by_day")]
    if 0 < len(trend) <= 2:  # a day or two of traces: per hour says more
        unit = "hour"
        trend = [_numbers(r) for r in view("feedback_by_hour")]
    for r in trend:
        r["bucket"] = r.pop(unit)
    # worst_traces computes its own traces with feedback and annotations (once each, not through those views), so
    # the scope is a condition on its rows: their start_time and service_name are the trace's, as in traces
    worst_sql = f"SELECT * FROM (\n{view_body('worst_traces')}\n) w" + (f"\nWHERE {where}" if where else "")
    worst_rows = rows(f"{worst_sql}\nORDER BY {WORST_TRACES_ORDER} LIMIT {int(worst)}") if worst > 0 else []
    worst_total = rows(f"SELECT count(*) AS n FROM (\n{worst_sql}\n) w")[0]["n"]
    pending = rows(
        f"SELECT count(*) AS n FROM (\n{view_body('review_queue')}\n) q "
        "WHERE q.trace_id IN (SELECT trace_id FROM traces)"
    )[0]["n"]
    return ReportData(
        generated_at=now,
        since=since_t,
        service=service,
        source=source,
        summary=summary,
        categories=[_numbers(r) for r in view("feedback_categories")],
        services=[_numbers(r) for r in view("feedback_by_service")],
        models=[_numbers(r) for r in view("feedback_by_model")],
        trend_unit=unit,
        trend=trend,
        worst=[_worst_row(r) for r in worst_rows],
        worst_total=int(worst_total or 0),
        agreement=[_numbers(r) for r in view("judge_agreement")],
        review_pending=int(pending or 0),
    )


def _empty_summary() -> dict[str, Any]:
    return {
        "traces": 0,
        "traces_with_feedback": 0,
        "feedback_rate": None,
        "positive": 0,
        "negative": 0,
        "positive_rate": None,
        "mean_rating": None,
        "ratings": 0,
    }


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    """Decimals (DuckDB's HUGEINT / DECIMAL through Arrow) as int / float; NaN as None."""
    out = {}
    for key, value in row.items():
        if value is not None and type(value).__name__ == "Decimal":
            value = int(value) if value == value.to_integral_value() else float(value)
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    return out


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _worst_row(row: dict[str, Any]) -> dict[str, Any]:
    out = _numbers(row)
    out["evaluations"] = [dict(e) for e in (out.get("evaluations") or [])]
    out["child_feedback"] = [
        {"span_name": c.get("span_name"), "patch": _json(c.get("patch"))} for c in (out.get("child_feedback") or [])
    ]
    out["expected"] = _json(out.get("expected"))
    return out


# -- formatting helpers ------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return "-" if x is None else f"{float(x):.1%}"


def _fixed(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{float(x):.{digits}f}"


def _int(x: Any) -> str:
    return "0" if x is None else str(int(x))


def _clean(text: Any) -> str:
    """User text made safe for one terminal line: control characters (escape sequences too) become spaces."""
    return " ".join(_CONTROL.sub(" ", str(text)).split())


def _excerpt(text: Any, limit: int = 100) -> str:
    if text is None:
        return "-"
    s = _clean(text)
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"


def _when(t: Any, unit: str = "minute") -> str:
    if not isinstance(t, datetime):
        return "-" if t is None else str(t)
    if unit == "day":
        return t.strftime("%Y-%m-%d")
    if unit == "hour":
        return t.strftime("%Y-%m-%d %H:00")
    return t.strftime("%Y-%m-%d %H:%M")


def _scope_text(data: ReportData) -> str:
    parts = []
    if data.since is not None:
        parts.append(f"since {data.since:%Y-%m-%d %H:%M:%S} UTC")
    if data.service is not None:
        parts.append(f"service {_clean(data.service)}")
    return "traces " + ", ".join(parts) if parts else "all traces"


def _evaluation_text(e: dict[str, Any]) -> str:
    verdict = " ".join(
        x
        for x in (
            _clean(e["label"]) if e.get("label") is not None else "",
            f"(score {_fixed(e['score'])})" if e.get("score") is not None else "",
        )
        if x
    )
    who = _clean(e.get("annotator_kind") or "")
    text = f"{_clean(e.get('span_name') or '?')} › {_clean(e.get('name') or '?')}: {verdict or '-'}"
    if who:
        text += f" [{who}]"
    if e.get("explanation"):
        text += f" — {_excerpt(e['explanation'], 80)}"
    return text


def _patch_text(c: dict[str, Any]) -> str:
    patch = c.get("patch")
    body = ", ".join(f"{k}={v}" for k, v in patch.items()) if isinstance(patch, dict) else str(patch)
    return f"{_clean(c.get('span_name') or '?')}: {_excerpt(body, 80)}"


def _verdict(row: dict[str, Any]) -> str:
    parts = []
    if row.get("user_feedback") is not None:
        parts.append(_clean(row["user_feedback"]))
    if row.get("user_feedback_rating") is not None:
        parts.append(f"rating {_fixed(row['user_feedback_rating'], 0)}")
    return ", ".join(parts) or "-"


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Aligned columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return (indent + "  ".join(out)).rstrip()

    return [line(headers)] + [line(r) for r in rows]


_GROUP_HEADERS = ("traces", "with feedback", "feedback rate", "positive", "negative", "positive rate", "mean rating")


def _group_cells(r: dict[str, Any]) -> list[str]:
    return [
        _int(r.get("traces")),
        _int(r.get("traces_with_feedback")),
        _pct(r.get("feedback_rate")),
        _int(r.get("positive")),
        _int(r.get("negative")),
        _pct(r.get("positive_rate")),
        _fixed(r.get("mean_rating")),
    ]


# -- terminal ----------------------------------------------------------------------------------------


def render_text(data: ReportData) -> str:
    """The report for a terminal (plain text; user text cleaned of control characters)."""
    s = data.summary
    out = [f"otel-feedback report: {_scope_text(data)}"]
    if data.source:
        out.append(f"  source: {data.source}; generated {data.generated_at:%Y-%m-%d %H:%M:%S} UTC")
    out.append("")
    out += _grid(
        ("Summary", ""),
        [
            ("traces", _int(s.get("traces"))),
            ("traces with feedback", _int(s.get("traces_with_feedback"))),
            ("feedback rate", _pct(s.get("feedback_rate"))),
            ("positive", _int(s.get("positive"))),
            ("negative", _int(s.get("negative"))),
            ("positive rate", _pct(s.get("positive_rate"))),
            ("mean rating", f"{_fixed(s.get('mean_rating'))} ({_int(s.get('ratings'))} ratings)"),
            ("awaiting review", _int(data.review_pending)),
        ],
        indent="",
    )
    if data.categories:
        out += ["", "Categories"]
        out += _grid(
            ("category", "traces", "share", "negative"),
            [
                (_clean(r["category"]), _int(r.get("traces")), _pct(r.get("share")), _int(r.get("negative")))
                for r in data.categories
            ],
        )
    for title, rows, key in (("By service", data.services, "service_name"), ("By model", data.models, "model")):
        if rows:
            out += ["", title]
            out += _grid(
                (key.split("_")[0], *_GROUP_HEADERS),
                [(_clean(r.get(key) if r.get(key) is not None else "(none)"), *_group_cells(r)) for r in rows],
            )
    if data.trend:
        out += ["", f"Trend by {data.trend_unit} (UTC)"]
        out += _grid(
            (data.trend_unit, *_GROUP_HEADERS),
            [(_when(r["bucket"], data.trend_unit), *_group_cells(r)) for r in data.trend],
        )
    out += ["", f"Worst traces ({data.worst_total} with negative feedback"]
    out[-1] += f"; the first {len(data.worst)})" if len(data.worst) < data.worst_total else ")"
    if not data.worst:
        out.append("  none")
    for i, r in enumerate(data.worst, 1):
        head = [
            f"{i}. {r['trace_id']}",
            _when(r.get("start_time")),
            " / ".join(_clean(x) for x in (r.get("service_name"), r.get("model")) if x is not None) or "-",
            _verdict(r),
        ]
        if r.get("user_feedback_category") is not None:
            head.append(f"category {_clean(r['user_feedback_category'])}")
        out.append("  " + "  ".join(head))
        if r.get("user_feedback_comment") is not None:
            out.append(f"     comment: {_excerpt(r['user_feedback_comment'])}")
        out.append(f"     input:   {_excerpt(r.get('input'))}")
        out.append(f"     output:  {_excerpt(r.get('output'))}")
        if r.get("expected") is not None:
            out.append(f"     expected: {_excerpt(r['expected'])}")
        why = [_evaluation_text(e) for e in r["evaluations"]] + [_patch_text(c) for c in r["child_feedback"]]
        for j, line in enumerate(why):
            out.append(f"     {'why:' if j == 0 else '':8} {line}")
    if data.agreement:
        out += ["", "Judge agreement (people vs LLM judges on the same targets)"]
        out += _grid(
            ("name", "label pairs", "agreement", "kappa", "score pairs", "correlation", "mean |diff|"),
            [
                (
                    _clean(r["name"]),
                    _int(r.get("label_pairs")),
                    _pct(r.get("label_agreement")),
                    _fixed(r.get("cohen_kappa"), 3),
                    _int(r.get("score_pairs")),
                    _fixed(r.get("score_correlation"), 3),
                    _fixed(r.get("mean_abs_score_diff"), 3),
                )
                for r in data.agreement
            ],
        )
    return "\n".join(out) + "\n"


# -- HTML --------------------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


_CSS = """
:root { --ink: #1f2933; --muted: #697586; --line: #e4e7eb; --blue: #2563eb; --green: #16a34a; --red: #dc2626;
        --amber: #d97706; --gray: #cbd2d9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0 auto; padding: 24px; max-width: 1180px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.meta { color: var(--muted); margin: 0 0 18px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .label { color: var(--muted); font-size: 12px; } .card .value { font-size: 22px; font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.chart { width: 100%; height: auto; display: block; }
svg .grid { stroke: var(--line); stroke-width: 1; } svg .axis { stroke: var(--muted); stroke-width: 1; }
svg text { fill: var(--muted); font-size: 12px; } svg .empty { font-size: 14px; }
svg .line { fill: none; stroke-width: 2.5; } svg .point { stroke: #fff; stroke-width: 1.5; }
#chart-satisfaction .line { stroke: var(--green); } #chart-satisfaction .point { fill: var(--green); }
#chart-rating .line { stroke: var(--amber); } #chart-rating .point { fill: var(--amber); }
svg .bar.traces { fill: var(--gray); } svg .bar.feedback { fill: var(--blue); }
.legend span { display: inline-block; margin-right: 12px; color: var(--muted); font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 6px 8px; vertical-align: top;
        border-bottom: 1px solid var(--line); } th { color: var(--muted); font-weight: 600; font-size: 12px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 280px; overflow-wrap: anywhere; } code { font-size: 12px; }
ul.why { margin: 0; padding-left: 16px; } .neg { color: var(--red); font-weight: 600; }
"""

_W, _H = 520, 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 14, 14, 44


def _x_positions(n: int) -> list[float]:
    plot = _W - _LEFT - _RIGHT
    return [_LEFT + plot * (i + 0.5) / n for i in range(n)]


def _y(value: float, lo: float, hi: float) -> float:
    plot = _H - _TOP - _BOTTOM
    return _TOP + plot * (1 - (value - lo) / (hi - lo))


def _frame(ticks: Sequence[tuple[float, str]], lo: float, hi: float, axis: Sequence[str]) -> list[str]:
    """Grid lines with y tick labels, the x axis, and as many x labels (``axis``) as fit without overlapping."""
    out = []
    for value, text in ticks:
        y = _y(value, lo, hi)
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="y-tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(text)}</text>')
    base = _H - _BOTTOM
    out.append(f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{base}" y2="{base}"/>')
    widest = max((len(a) for a in axis), default=1) * 7 + 12
    step = max(1, math.ceil(len(axis) / max(1, (_W - _LEFT - _RIGHT) // widest)))
    for i, (x, text) in enumerate(zip(_x_positions(len(axis)), axis, strict=True)):
        if i % step == 0:
            out.append(f'<text class="x-label" x="{x:.1f}" y="{base + 16}" text-anchor="middle">{_e(text)}</text>')
    return out


def _svg(chart_id: str, title: str, body: list[str]) -> str:
    return (
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def line_chart(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    lo: float,
    hi: float,
    ticks: Sequence[tuple[float, str]],
    fmt: Callable[[float], str],
    axis: Sequence[str] | None = None,
) -> str:
    """A line with one ``circle.point`` per bucket that has a value (gaps where it has none); ``labels`` name
    the buckets (tooltips, ``data-bucket``), ``axis`` is the shorter text under the axis."""
    body = _frame(ticks, lo, hi, axis if axis is not None else labels)
    points = [
        (x, _y(v, lo, hi), label, v)
        for x, label, v in zip(_x_positions(len(labels)), labels, values, strict=True)
        if v is not None
    ]
    if not points:
        body.append(f'<text class="empty" x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data</text>')
        return _svg(chart_id, title, body)
    d, connected = [], False
    for x, v in zip(_x_positions(len(labels)), values, strict=True):
        if v is None:
            connected = False
            continue
        d.append(f"{'L' if connected else 'M'}{x:.1f},{_y(v, lo, hi):.1f}")
        connected = True
    body.append(f'<path class="line" d="{" ".join(d)}"/>')
    for x, y, label, v in points:
        body.append(
            f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="4" data-bucket="{_e(label)}" data-value="{v:.6g}">'
            f"<title>{_e(label)}: {_e(fmt(v))}</title></circle>"
        )
    return _svg(chart_id, title, body)


def _nice_max(n: float) -> int:
    if n <= 5:
        return 5
    magnitude = 10 ** math.floor(math.log10(n))
    for m in (1, 2, 2.5, 5, 10):
        if n <= m * magnitude:
            return int(m * magnitude)
    return int(10 * magnitude)


def volume_chart(
    chart_id: str,
    labels: Sequence[str],
    traces: Sequence[int],
    feedback: Sequence[int],
    axis: Sequence[str] | None = None,
) -> str:
    """Two bars per bucket: all traces (gray) and traces with feedback (blue)."""
    top = _nice_max(max([*traces, 1]))
    step = 1 if top <= 5 else 2 if top <= 10 else top // 5
    ticks = [(float(v), str(v)) for v in range(0, top + 1, step)]
    body = _frame(ticks, 0, top, axis if axis is not None else labels)
    n = max(len(labels), 1)
    width = (_W - _LEFT - _RIGHT) / n * 0.36
    base = _H - _BOTTOM
    for x, label, t, f in zip(_x_positions(len(labels)), labels, traces, feedback, strict=True):
        for cls, value, dx in (("traces", t, -width), ("feedback", f, 0.0)):
            y = _y(value, 0, top)
            body.append(
                f'<rect class="bar {cls}" x="{x + dx:.1f}" y="{y:.1f}" width="{width:.1f}" height="{base - y:.1f}" '
                f'data-bucket="{_e(label)}" data-value="{int(value)}"><title>{_e(label)}: {int(value)} '
                f"{'traces' if cls == 'traces' else 'with feedback'}</title></rect>"
            )
    if not labels:
        body.append(f'<text class="empty" x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data</text>')
    return _svg(chart_id, "Feedback volume", body)


def _cards(data: ReportData) -> str:
    s = data.summary
    cards = [
        ("Traces", _int(s.get("traces"))),
        ("With feedback", _int(s.get("traces_with_feedback"))),
        ("Feedback rate", _pct(s.get("feedback_rate"))),
        ("Positive rate", _pct(s.get("positive_rate"))),
        ("Mean rating", _fixed(s.get("mean_rating"))),
        ("Negative", _int(s.get("negative"))),
        ("Awaiting review", _int(data.review_pending)),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card" id="card-{_e(label.lower().replace(" ", "-"))}"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(value)}</div></div>'
            for label, value in cards
        )
        + "</div>"
    )


def _html_table(table_id: str, headers: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]]) -> str:
    """``headers``: (title, numeric); ``rows``: cells already escaped HTML."""
    num_attr = ' class="num"'
    head = "".join(f"<th{num_attr if num else ''}>{_e(h)}</th>" for h, num in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td{num_attr if num else ''}>{c}</td>" for c, (_h, num) in zip(r, headers, strict=True))
        + "</tr>"
        for r in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _group_table(table_id: str, key_title: str, key: str, rows: list[dict[str, Any]]) -> str:
    headers = [(key_title, False)] + [(h, True) for h in _GROUP_HEADERS]
    return _html_table(
        table_id,
        headers,
        [[_e(r.get(key) if r.get(key) is not None else "(none)"), *map(_e, _group_cells(r))] for r in rows],
    )


def _worst_table(data: ReportData) -> str:
    rows = []
    for i, r in enumerate(data.worst, 1):
        why = [_evaluation_text(e) for e in r["evaluations"]] + [_patch_text(c) for c in r["child_feedback"]]
        rows.append(
            [
                str(i),
                f"<code>{_e(r['trace_id'])}</code><br>{_e(_when(r.get('start_time')))}",
                _e(" / ".join(str(x) for x in (r.get("service_name"), r.get("model")) if x is not None) or "-"),
                f'<span class="neg">{_e(_verdict(r))}</span>',
                _e(r.get("user_feedback_category") or "-"),
                _e(_excerpt(r.get("user_feedback_comment"), 200)),
                _e(_excerpt(r.get("input"), 300)),
                _e(_excerpt(r.get("output"), 300)),
                '<ul class="why">' + "".join(f"<li>{_e(w)}</li>" for w in why) + "</ul>" if why else "-",
            ]
        )
    headers = [
        ("#", True),
        ("trace", False),
        ("service / model", False),
        ("feedback", False),
        ("category", False),
        ("comment", False),
        ("input", False),
        ("output", False),
        ("why (evaluations, child-span feedback)", False),
    ]
    table = _html_table("worst-traces", headers, rows)
    return table.replace("<td>", '<td class="text">')


def _filled(trend: list[dict[str, Any]], unit: str) -> list[tuple[datetime, dict[str, Any]]]:
    """Every day (hour) from the first bucket to the last, so the x axis is time; empty buckets as ``{}``."""
    rows = {r["bucket"]: r for r in trend if isinstance(r.get("bucket"), datetime)}
    if not rows:
        return []
    step = timedelta(days=1) if unit == "day" else timedelta(hours=1)
    first, last = min(rows), max(rows)
    count = min(int((last - first) / step) + 1, 5000)
    return [(first + i * step, rows.get(first + i * step, {})) for i in range(count)]


def render_html(data: ReportData) -> str:
    """One self-contained HTML page: no script, no network (a Content-Security-Policy forbids both)."""
    unit = data.trend_unit
    series = _filled(data.trend, unit)
    labels = [_when(t, unit) for t, _r in series]
    axis = [t.strftime("%b %d" if unit == "day" else "%b %d %H:00") for t, _r in series]
    satisfaction = line_chart(
        "chart-satisfaction",
        "Satisfaction (positive rate)",
        labels,
        [r.get("positive_rate") for _t, r in series],
        lo=0.0,
        hi=1.0,
        ticks=[(k / 4, f"{k * 25}%") for k in range(5)],
        fmt=lambda v: f"{v:.1%}",
        axis=axis,
    )
    rating = line_chart(
        "chart-rating",
        "Mean rating",
        labels,
        [r.get("mean_rating") for _t, r in series],
        lo=1.0,
        hi=5.0,
        ticks=[(float(k), str(k)) for k in range(1, 6)],
        fmt=lambda v: f"{v:.2f}",
        axis=axis,
    )
    volume = volume_chart(
        "chart-volume",
        labels,
        [int(r.get("traces") or 0) for _t, r in series],
        [int(r.get("traces_with_feedback") or 0) for _t, r in series],
        axis=axis,
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>otel-feedback report: {_e(_scope_text(data))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<h1>otel-feedback report</h1><p class="meta">{_e(_scope_text(data))}'
        + (f" · {_e(data.source)}" if data.source else "")
        + f" · generated {data.generated_at:%Y-%m-%d %H:%M:%S} UTC</p>",
        _cards(data),
        f"<h2>Over time (per {unit}, UTC)</h2>",
        '<div class="charts">',
        f"<figure><figcaption>Satisfaction (positive rate)</figcaption>{satisfaction}</figure>",
        f"<figure><figcaption>Mean rating</figcaption>{rating}</figure>",
        '<figure><figcaption>Feedback volume</figcaption><div class="legend">'
        '<span><i style="background:#cbd2d9"></i>traces</span>'
        '<span><i style="background:#2563eb"></i>with feedback</span></div>'
        f"{volume}</figure>",
        "</div>",
        f"<h2>Worst traces ({data.worst_total} with negative feedback"
        + (f"; the first {len(data.worst)}" if len(data.worst) < data.worst_total else "")
        + ")</h2>",
        _worst_table(data) if data.worst else "<p>None.</p>",
    ]
    if data.categories:
        parts += [
            "<h2>Categories</h2>",
            _html_table(
                "categories",
                [("category", False), ("traces", True), ("share", True), ("negative", True)],
                [
                    [
                        _e(r["category"]),
                        _e(_int(r.get("traces"))),
                        _e(_pct(r.get("share"))),
                        _e(_int(r.get("negative"))),
                    ]
                    for r in data.categories
                ],
            ),
        ]
    if data.services:
        parts += ["<h2>By service</h2>", _group_table("by-service", "service", "service_name", data.services)]
    if data.models:
        parts += ["<h2>By model</h2>", _group_table("by-model", "model", "model", data.models)]
    if data.agreement:
        parts += [
            "<h2>Judge agreement (people vs LLM judges)</h2>",
            _html_table(
                "agreement",
                [
                    ("name", False),
                    ("label pairs", True),
                    ("agreement", True),
                    ("Cohen's kappa", True),
                    ("score pairs", True),
                    ("correlation", True),
                    ("mean |diff|", True),
                ],
                [
                    [
                        _e(r["name"]),
                        _e(_int(r.get("label_pairs"))),
                        _e(_pct(r.get("label_agreement"))),
                        _e(_fixed(r.get("cohen_kappa"), 3)),
                        _e(_int(r.get("score_pairs"))),
                        _e(_fixed(r.get("score_correlation"), 3)),
                        _e(_fixed(r.get("mean_abs_score_diff"), 3)),
                    ]
                    for r in data.agreement
                ],
            ),
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)
