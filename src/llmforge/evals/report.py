"""Reports of a run: one self-contained HTML file with charts, and a JSON export.

The HTML has inline CSS and inline SVG charts drawn here (a score histogram per metric and, when a
comparison is given, the A/B mean differences with their 95% intervals), then a per-case table.
It loads nothing from anywhere, so it can be mailed or attached to a CI job. Every piece of dataset
or model text is HTML-escaped. The JSON export is the run, its results and the comparison as data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from typing import Any

from llmforge.evals.compare import Comparison
from llmforge.evals.store import CaseResult, RunInfo

BINS = 10
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#5b6475;margin-bottom:16px}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #e3e6ec;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f5f7fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{border:1px solid #e3e6ec;border-radius:6px}
.err{color:#b42318}.good{color:#067647}.bad{color:#b42318}
.text{max-width:420px;white-space:pre-wrap;word-break:break-word;font-size:13px}
"""


def render_html(
    run: RunInfo, results: Sequence[CaseResult], comparison: Comparison | None = None
) -> str:
    created = dt.datetime.fromtimestamp(run.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Evaluation {escape(run.id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Evaluation {escape(run.id)}</h1>",
        f"<div class=meta>target <b>{escape(run.target)}</b> · dataset "
        f"<b>{escape(run.dataset)}</b> ({run.cases} cases, {run.done} stored) · judge "
        f"{escape(run.judge or '-')} · {escape(run.status)} · {created}</div>",
        _summary_table(run),
        "<h2>Score distributions</h2><div class=charts>",
        *(_histogram(m, _values(results, m)) for m in run.metrics),
        "</div>",
    ]
    if comparison is not None:
        parts += [
            f"<h2>A/B: {escape(comparison.run_b)} minus {escape(comparison.run_a)}</h2>",
            f"<div class=meta>{comparison.shared_cases} shared cases · only in A: "
            f"{comparison.only_a} · only in B: {comparison.only_b} · paired bootstrap 95% "
            "interval</div>",
            _delta_chart(comparison),
            _delta_table(comparison),
        ]
    parts += ["<h2>Cases</h2>", _case_table(run, results), "</body></html>"]
    return "\n".join(parts)


def export_json(
    run: RunInfo, results: Sequence[CaseResult], comparison: Comparison | None = None
) -> dict[str, Any]:
    return {
        "run": run.model_dump(mode="json"),
        "results": [r.model_dump(mode="json") for r in results],
        "comparison": comparison.model_dump(mode="json") if comparison else None,
    }


def _values(results: Sequence[CaseResult], metric: str) -> list[float]:
    return [
        s.value for r in results if (s := r.scores.get(metric)) is not None and s.value is not None
    ]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _summary_table(run: RunInfo) -> str:
    rows = []
    for name in run.metrics:
        s = run.summary.get(name)
        if s is None:
            rows.append(f"<tr><td>{escape(name)}</td><td colspan=5>not summarized yet</td></tr>")
            continue
        errors = f"<span class=err>{s.errors}</span>" if s.errors else "0"
        rows.append(
            f"<tr><td>{escape(name)}</td><td class=num>{_fmt(s.mean)}</td>"
            f"<td class=num>{_fmt(s.std)}</td><td class=num>{_fmt(s.spread)}</td>"
            f"<td class=num>{s.scored}</td><td class=num>{errors}</td></tr>"
        )
    return (
        "<table><tr><th>metric</th><th>mean</th><th>std across cases</th>"
        "<th>judge spread</th><th>scored</th><th>errors</th></tr>" + "".join(rows) + "</table>"
    )


def _histogram(metric: str, values: Sequence[float]) -> str:
    """Bars of how many cases scored in each tenth of [0, 1]."""
    width, height, pad = 300, 150, 24
    counts = [0] * BINS
    for v in values:
        counts[min(BINS - 1, max(0, int(v * BINS)))] += 1
    top = max(counts) or 1
    bar_w = (width - 2 * pad) / BINS
    bars = []
    for i, c in enumerate(counts):
        h = (height - 2 * pad) * c / top
        x, y = pad + i * bar_w, height - pad - h
        bars.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
            f'fill="#3b6fd8"><title>{i / BINS:.1f}-{(i + 1) / BINS:.1f}: {c}</title></rect>'
        )
    return (
        f'<svg class="chart histogram" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(metric)} distribution" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="{pad}" y="16" font-size="13" font-weight="600">{escape(metric)}</text>'
        f'<text x="{width - pad}" y="16" font-size="11" text-anchor="end">n={len(values)}</text>'
        + "".join(bars)
        + f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#8a93a6"/>'
        f'<text x="{pad}" y="{height - 8}" font-size="11">0</text>'
        f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">1</text>'
        "</svg>"
    )


def _delta_chart(comparison: Comparison) -> str:
    """One row per metric: the mean difference as a dot, its interval as a line, 0 marked."""
    rows = [m for m in comparison.metrics if m.delta is not None]
    width, label_w, row_h = 640, 160, 28
    height = row_h * max(1, len(rows)) + 30
    span = max([0.05, *(abs(x) for m in rows for x in (m.ci_low, m.ci_high, m.delta) if x)])
    plot_w = width - label_w - 20

    def x(v: float) -> float:
        return label_w + plot_w * (v + span) / (2 * span)

    items = [
        f'<line x1="{x(0):.1f}" y1="4" x2="{x(0):.1f}" y2="{height - 22}" stroke="#8a93a6" '
        'stroke-dasharray="3 3"/>',
        f'<text x="{label_w}" y="{height - 6}" font-size="11">{-span:+.2f}</text>',
        f'<text x="{x(0):.1f}" y="{height - 6}" font-size="11" text-anchor="middle">0</text>',
        f'<text x="{width - 20}" y="{height - 6}" font-size="11" text-anchor="end">'
        f"{span:+.2f}</text>",
    ]
    for i, m in enumerate(rows):
        assert m.delta is not None and m.ci_low is not None and m.ci_high is not None
        y = 18 + i * row_h
        color = (
            "#067647"
            if m.significant and m.delta > 0
            else ("#b42318" if m.significant else "#5b6475")
        )
        items += [
            f'<text x="4" y="{y + 4}" font-size="12">{escape(m.metric)}</text>',
            f'<line x1="{x(m.ci_low):.1f}" y1="{y}" x2="{x(m.ci_high):.1f}" y2="{y}" '
            f'stroke="{color}" stroke-width="2"/>',
            f'<circle cx="{x(m.delta):.1f}" cy="{y}" r="5" fill="{color}"><title>'
            f"{escape(m.metric)}: {m.delta:+.3f} [{m.ci_low:+.3f}, {m.ci_high:+.3f}]"
            "</title></circle>",
        ]
    return (
        f'<svg class="chart deltas" width="{width}" height="{height}" role="img" '
        'aria-label="A/B mean differences" xmlns="http://www.w3.org/2000/svg">'
        + "".join(items)
        + "</svg>"
    )


def _delta_table(comparison: Comparison) -> str:
    rows = []
    for m in comparison.metrics:
        cls = "" if not m.significant else (" class=good" if (m.delta or 0) > 0 else " class=bad")
        rows.append(
            f"<tr{cls}><td>{escape(m.metric)}</td><td class=num>{m.pairs}</td>"
            f"<td class=num>{_fmt(m.mean_a)}</td><td class=num>{_fmt(m.mean_b)}</td>"
            f"<td class=num>{_fmt(m.delta)}</td>"
            f"<td class=num>[{_fmt(m.ci_low)}, {_fmt(m.ci_high)}]</td>"
            f"<td class=num>{m.wins}/{m.losses}/{m.ties}</td></tr>"
        )
    return (
        "<table><tr><th>metric</th><th>pairs</th><th>A</th><th>B</th><th>B-A</th>"
        "<th>95% CI</th><th>B better/worse/same</th></tr>" + "".join(rows) + "</table>"
    )


def _case_table(run: RunInfo, results: Sequence[CaseResult]) -> str:
    head = "".join(f"<th>{escape(m)}</th>" for m in run.metrics)
    rows = []
    for r in results:
        cells = []
        for m in run.metrics:
            s = r.scores.get(m)
            if s is None:
                cells.append("<td>-</td>")
            elif s.value is None:
                cells.append(f'<td class=err title="{escape(s.error or "")}">error</td>')
            else:
                spread = f" ±{s.spread:.2f}" if len(s.samples) > 1 else ""
                cells.append(f"<td class=num>{s.value:.3f}{spread}</td>")
        question = _question(r.case)
        expected = r.case.get("expected") or ""
        output = r.output.text if r.error is None else f"error: {r.error}"
        rows.append(
            f"<tr><td>{escape(r.case_id)}</td><td class=text>{escape(question)}</td>"
            f"<td class=text>{escape(str(expected))}</td>"
            f'<td class="text{" err" if r.error else ""}">{escape(output)}</td>'
            + "".join(cells)
            + "</tr>"
        )
    return (
        "<table><tr><th>case</th><th>input</th><th>expected</th><th>output</th>"
        + head
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _question(case: dict[str, Any]) -> str:
    value = case.get("input")
    if isinstance(value, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in value)
    return str(value or "")
