"""The HTML report: self-contained, with charts, every dataset text escaped; the JSON export."""

from __future__ import annotations

import json
import re

from llmforge.evals import (
    CaseResult,
    MetricSummary,
    Output,
    RunInfo,
    Score,
    compare_runs,
    export_json,
    render_html,
)

EVIL = '<script>alert("x")</script>'

RUN = RunInfo(
    id="run-1",
    created_at=1_767_225_600.0,
    dataset="qa",
    dataset_digest="d",
    cases=2,
    target="local",
    judge="judge",
    metrics=["exact_match", "rubric"],
    status="done",
    summary={
        "exact_match": MetricSummary(mean=0.5, std=0.5, scored=2),
        "rubric": MetricSummary(mean=0.75, spread=0.1, scored=1, errors=1),
    },
    done=2,
)
RESULTS = [
    CaseResult(
        case_id="c1",
        position=0,
        case={"input": EVIL, "expected": "a & b"},
        output=Output(text="<b>bold</b> answer"),
        scores={
            "exact_match": Score(value=1.0),
            "rubric": Score(value=0.75, samples=[0.5, 1.0]),
        },
    ),
    CaseResult(
        case_id="c2",
        position=1,
        case={"input": [{"role": "user", "content": "hi"}]},
        output=Output(text="hello"),
        scores={"exact_match": Score(value=0.0), "rubric": Score.failed("judge <failed>")},
    ),
]


def test_report_has_a_chart_per_metric_and_escapes_all_text() -> None:
    html = render_html(RUN, RESULTS)
    assert html.count('<svg class="chart histogram"') == 2
    assert EVIL not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt; answer" in html
    assert "a &amp; b" in html
    assert "0.750 ±0.25" in html  # judge samples show their spread
    assert 'title="judge &lt;failed&gt;">error<' in html


def test_report_is_self_contained() -> None:
    html = render_html(RUN, RESULTS)
    assert "<script" not in html and "<link" not in html and "src=" not in html
    assert re.findall(r"https?://[^\"]+", html) == ["http://www.w3.org/2000/svg"] * 2


def test_report_with_a_comparison_draws_the_deltas() -> None:
    better = [r.model_copy(update={"scores": {"exact_match": Score(value=1.0)}}) for r in RESULTS]
    cmp = compare_runs("run-0", RESULTS, "run-1", better, ["exact_match"])
    html = render_html(RUN, better, cmp)
    assert '<svg class="chart deltas"' in html
    assert "A/B: run-1 minus run-0" in html and "+0.500" in html


def test_json_export_round_trips() -> None:
    data = json.loads(json.dumps(export_json(RUN, RESULTS)))
    assert data["run"]["id"] == "run-1" and data["comparison"] is None
    assert data["results"][1]["scores"]["rubric"]["error"] == "judge <failed>"
