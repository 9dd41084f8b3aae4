"""Comparing two runs: paired differences over shared cases, a fixed-seed bootstrap interval."""

from __future__ import annotations

import pytest

from llmforge.evals import CaseResult, Output, Score, compare_runs, paired_bootstrap


def results(values: dict[str, float | None], metric: str = "m") -> list[CaseResult]:
    return [
        CaseResult(
            case_id=cid,
            position=i,
            case={"input": cid},
            output=Output(text=cid),
            scores={metric: Score(value=v) if v is not None else Score.failed("judge failed")},
        )
        for i, (cid, v) in enumerate(values.items())
    ]


def test_a_consistent_improvement_is_significant_and_its_interval_holds_the_mean() -> None:
    a = {f"c{i}": 0.5 for i in range(20)}
    b = {f"c{i}": 0.5 + (0.2 if i % 4 else 0.0) for i in range(20)}  # 15 of 20 gain 0.2
    cmp = compare_runs("A", results(a), "B", results(b), ["m"])
    [d] = cmp.metrics
    assert d.pairs == 20 and d.delta == pytest.approx(0.15)
    assert d.ci_low is not None and d.ci_high is not None
    assert 0 < d.ci_low <= 0.15 <= d.ci_high <= 0.2
    assert d.significant and (d.wins, d.losses, d.ties) == (15, 0, 5)


def test_noise_around_zero_is_not_significant() -> None:
    a = {f"c{i}": 0.5 for i in range(10)}
    b = {f"c{i}": 0.5 + (0.1 if i % 2 else -0.1) for i in range(10)}
    [d] = compare_runs("A", results(a), "B", results(b), ["m"]).metrics
    assert d.delta == pytest.approx(0.0)
    assert d.ci_low is not None and d.ci_high is not None and d.ci_low < 0 < d.ci_high
    assert not d.significant


def test_only_shared_cases_scored_in_both_runs_are_paired() -> None:
    a = {"x": 1.0, "y": 0.0, "z": 0.0, "only_a": 1.0}
    b = {"x": 1.0, "y": 1.0, "z": None, "only_b": 0.0}
    cmp = compare_runs("A", results(a), "B", results(b), ["m"])
    assert (cmp.shared_cases, cmp.only_a, cmp.only_b) == (3, 1, 1)
    [d] = cmp.metrics
    assert d.pairs == 2 and d.delta == pytest.approx(0.5)  # z errored in B: left out


def test_the_interval_is_reproducible_and_exact_for_constant_differences() -> None:
    diffs = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.5]
    assert paired_bootstrap(diffs) == paired_bootstrap(diffs)
    assert paired_bootstrap([0.25] * 5) == (0.25, 0.25)


def test_a_metric_neither_run_scored_has_no_delta() -> None:
    [d] = compare_runs("A", results({"x": None}), "B", results({"x": 1.0}), ["m"]).metrics
    assert d.pairs == 0 and d.delta is None and not d.significant
