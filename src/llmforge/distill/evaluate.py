"""Evaluate and gate: the student and the teacher on the test split, through the evals package.

Both are evaluation runs of `evals` (stored, resumable, listed by `llmforge eval list`, reported by
`llmforge eval report`): the student answers each test prompt; the teacher's answers are the labels
it already gave (it is not paid twice). Each output is scored by the flywheel's metric against the
case's gold `reference` when the source had one, else against the teacher's label (then the
teacher scores 1 by construction and the student's score is its agreement with the teacher). The
two runs are compared case by case (`compare_runs`: paired bootstrap interval), and the **gate**
passes when the student's mean is at least `gate_share` of the teacher's.

The same scoring checks an exported GGUF against the merged model it came from (export.py).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from llmforge.core.types import Sampling
from llmforge.distill.collect import Example
from llmforge.distill.config import EvalSpec
from llmforge.evals import (
    Case,
    Dataset,
    EvalStore,
    MetricOptions,
    Output,
    RunInfo,
    RunSpec,
    build_metrics,
    compare_runs,
    run_eval,
)
from llmforge.models.base import ChatModel

Progress = Callable[[int, int], None]


class EvalResult(BaseModel):
    metric: str
    reference: str = Field(description="`gold` (the source's labels) or `teacher` (its labels)")
    cases: int
    student_run: str = Field(description="the student's evals run id")
    teacher_run: str
    student_score: float | None
    teacher_score: float | None
    ratio: float | None = Field(None, description="student score / teacher score")
    gate_share: float
    passed: bool
    ci_low: float | None = Field(None, description="95% interval of student - teacher")
    ci_high: float | None = None
    wins: int = 0
    losses: int = 0
    student_latency_p50_ms: float | None = None


class LabelTarget:
    """The teacher on the test split: the answers it gave when labelling."""

    def __init__(self, name: str) -> None:
        self.name = name

    def cache_key(self, case: Case) -> None:
        return None

    async def produce(self, case: Case) -> Output:
        return Output(text=str(case.metadata.get("label") or ""))


class ChatTarget:
    """A chat model answering each case (never cached: the student changes under a name)."""

    def __init__(self, name: str, model: ChatModel, sampling: Sampling) -> None:
        self.name = name
        self._model = model
        self._sampling = sampling

    def cache_key(self, case: Case) -> None:
        return None

    async def produce(self, case: Case) -> Output:
        completion = await self._model.complete(case.messages(), self._sampling)
        return Output(text=completion.text.strip())


def test_dataset(examples: Sequence[Example], name: str) -> tuple[Dataset, str]:
    """The test split as an evals dataset, and what its references are."""
    gold = all(ex.reference is not None for ex in examples)
    cases = [
        Case(
            id=ex.id,
            input=list(ex.messages),
            expected=ex.reference if gold else ex.label,
            metadata={"label": ex.label or ""},
        )
        for ex in examples
    ]
    digest = hashlib.sha256("".join(c.model_dump_json() + "\n" for c in cases).encode()).hexdigest()
    return Dataset(name=name, digest=digest, cases=cases), "gold" if gold else "teacher"


async def score(
    dataset: Dataset,
    target: ChatTarget | LabelTarget,
    spec: EvalSpec,
    store: EvalStore,
    run_id: str,
    progress: Progress | None = None,
) -> RunInfo:
    """One evals run of `target` over the dataset with the flywheel's metric (resumed if it
    exists)."""
    metrics = build_metrics([spec.metric], MetricOptions())
    run = RunSpec(
        dataset=dataset,
        target=target.name,
        metrics=[spec.metric],
        run_id=run_id,
        concurrency=spec.concurrency,
        use_cache=False,
    )
    return await run_eval(run, store, target, metrics, progress)


def mean_of(run: RunInfo, metric: str) -> float | None:
    summary = run.summary.get(metric)
    return None if summary is None else summary.mean


def latency_p50(store: EvalStore, run_id: str) -> float | None:
    values = [r.latency_ms for r in store.results(run_id) if r.error is None]
    return statistics.median(values) if values else None


async def evaluate(
    examples: Sequence[Example],
    student: ChatModel,
    spec: EvalSpec,
    store: EvalStore,
    run_prefix: str,
    teacher_name: str,
    progress: Progress | None = None,
) -> EvalResult:
    """Score student and teacher on the test split and decide the gate."""
    dataset, reference = test_dataset(examples, run_prefix)
    sampling = Sampling(max_tokens=spec.max_tokens, temperature=0.0)
    student_run = await score(
        dataset,
        ChatTarget(f"{run_prefix}:student", student, sampling),
        spec,
        store,
        f"{run_prefix}-student",
        progress,
    )
    teacher_run = await score(
        dataset, LabelTarget(teacher_name), spec, store, f"{run_prefix}-teacher"
    )
    s, t = mean_of(student_run, spec.metric), mean_of(teacher_run, spec.metric)
    ratio = None if s is None or not t else s / t
    passed = s is not None and t is not None and s >= spec.gate_share * t
    [delta] = compare_runs(
        teacher_run.id,
        store.results(teacher_run.id),
        student_run.id,
        store.results(student_run.id),
        [spec.metric],
    ).metrics
    return EvalResult(
        metric=spec.metric,
        reference=reference,
        cases=len(dataset.cases),
        student_run=student_run.id,
        teacher_run=teacher_run.id,
        student_score=s,
        teacher_score=t,
        ratio=ratio,
        gate_share=spec.gate_share,
        passed=passed,
        ci_low=delta.ci_low,
        ci_high=delta.ci_high,
        wins=delta.wins,
        losses=delta.losses,
        student_latency_p50_ms=latency_p50(store, student_run.id),
    )
