"""Comparing two runs: per-metric mean difference over the cases both scored, with a paired
bootstrap 95% confidence interval.

Pairing by case id removes the between-case variance that dominates small evaluation sets: the
question is "did the same cases get better", not "are two averages different". The bootstrap
resamples the per-case differences with a fixed seed, so the same two runs always give the same
interval. An interval that excludes 0 is reported as a significant change. Cases that only one
run has, or that errored in either, are left out and counted.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

from pydantic import BaseModel

from llmforge.evals.store import CaseResult

BOOTSTRAP_SAMPLES = 2000
SEED = 0


class MetricDelta(BaseModel):
    metric: str
    pairs: int
    mean_a: float | None
    mean_b: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    significant: bool
    wins: int
    losses: int
    ties: int


class Comparison(BaseModel):
    run_a: str
    run_b: str
    shared_cases: int
    only_a: int
    only_b: int
    metrics: list[MetricDelta]


def paired_bootstrap(
    diffs: Sequence[float],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the mean of `diffs` under resampling with replacement."""
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(samples))
    tail = (1 - confidence) / 2
    low = means[int(tail * samples)]
    high = means[min(samples - 1, int((1 - tail) * samples))]
    return low, high


def compare_runs(
    run_a: str,
    results_a: Sequence[CaseResult],
    run_b: str,
    results_b: Sequence[CaseResult],
    metrics: Sequence[str],
) -> Comparison:
    by_a = {r.case_id: r for r in results_a}
    by_b = {r.case_id: r for r in results_b}
    shared = [cid for cid in by_a if cid in by_b]
    deltas = []
    for name in metrics:
        pairs = []
        for cid in shared:
            a, b = by_a[cid].scores.get(name), by_b[cid].scores.get(name)
            if a and b and a.value is not None and b.value is not None:
                pairs.append((a.value, b.value))
        diffs = [b - a for a, b in pairs]
        if not diffs:
            deltas.append(
                MetricDelta(
                    metric=name,
                    pairs=0,
                    mean_a=None,
                    mean_b=None,
                    delta=None,
                    ci_low=None,
                    ci_high=None,
                    significant=False,
                    wins=0,
                    losses=0,
                    ties=0,
                )
            )
            continue
        low, high = paired_bootstrap(diffs)
        deltas.append(
            MetricDelta(
                metric=name,
                pairs=len(diffs),
                mean_a=statistics.fmean(a for a, _ in pairs),
                mean_b=statistics.fmean(b for _, b in pairs),
                delta=statistics.fmean(diffs),
                ci_low=low,
                ci_high=high,
                significant=low > 0 or high < 0,
                wins=sum(d > 0 for d in diffs),
                losses=sum(d < 0 for d in diffs),
                ties=sum(d == 0 for d in diffs),
            )
        )
    return Comparison(
        run_a=run_a,
        run_b=run_b,
        shared_cases=len(shared),
        only_a=len(by_a) - len(shared),
        only_b=len(by_b) - len(shared),
        metrics=deltas,
    )
