"""Evaluation: datasets, metrics (pure scoring functions), an injected LLM judge, a resumable
runner that stores results, paired comparison of runs, a CI gate and HTML/JSON reports.

- `load_dataset(path) -> Dataset` (JSONL cases, per-line errors), `cases_from_traces`,
  `synthesize` (Q/A cases from a knowledge base).
- `metric_registry` (entry points `llmforge.metrics`), `Metric` protocol, `MetricOptions`,
  `build_metrics(names, options)`; built-ins in `metrics.py` (reference and retrieval) and
  `judge.py` (rubric, faithfulness, answer_relevancy, pairwise).
- `run_eval(spec, store, target, metrics)` with `ModelTarget` / `RetrievalTarget`; `EvalStore`.
- `compare_runs` (paired bootstrap), `gate_failures`, `render_html`, `export_json`.

This package never imports the gateway: the CLI and the gateway's routes build on it.
"""

from llmforge.evals.base import (
    JUDGE_METRICS,
    Metric,
    MetricOptions,
    Output,
    Score,
    build_metrics,
    metric_registry,
)
from llmforge.evals.compare import Comparison, MetricDelta, compare_runs, paired_bootstrap
from llmforge.evals.dataset import (
    Case,
    Dataset,
    TraceFilter,
    cases_from_traces,
    load_dataset,
    write_dataset,
)
from llmforge.evals.gate import GATE_FAILED_EXIT, gate_failures, parse_thresholds
from llmforge.evals.judge import Judge, JudgeError
from llmforge.evals.report import export_json, render_html
from llmforge.evals.runner import ModelTarget, RetrievalTarget, RunSpec, run_eval, summarize
from llmforge.evals.store import CaseResult, EvalStore, MetricSummary, RunInfo

__all__ = [
    "GATE_FAILED_EXIT",
    "JUDGE_METRICS",
    "Case",
    "CaseResult",
    "Comparison",
    "Dataset",
    "EvalStore",
    "Judge",
    "JudgeError",
    "Metric",
    "MetricDelta",
    "MetricOptions",
    "MetricSummary",
    "ModelTarget",
    "Output",
    "RetrievalTarget",
    "RunInfo",
    "RunSpec",
    "Score",
    "TraceFilter",
    "build_metrics",
    "cases_from_traces",
    "compare_runs",
    "export_json",
    "gate_failures",
    "load_dataset",
    "metric_registry",
    "paired_bootstrap",
    "parse_thresholds",
    "render_html",
    "run_eval",
    "summarize",
    "write_dataset",
]
