"""The release gate: `--fail-under metric=value` thresholds checked against a run's summary.

A metric fails the gate when its mean is below the threshold, or when it has no scored case at all
(every case an error): an evaluation that measured nothing must not pass. The CLI exits with
`GATE_FAILED_EXIT` (3) when any threshold fails, distinct from 1 (an error) and 2 (bad usage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llmforge.core.errors import InvalidRequestError
from llmforge.evals.store import MetricSummary

GATE_FAILED_EXIT = 3


def parse_thresholds(items: Sequence[str], metrics: Sequence[str]) -> dict[str, float]:
    """`["exact_match=0.8", ...]` -> {metric: threshold}; each metric must be one that runs."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not sep or value != value:
            raise InvalidRequestError(
                f"--fail-under '{item}': write METRIC=VALUE, e.g. exact_match=0.8",
                param="fail_under",
            )
        if name not in metrics:
            raise InvalidRequestError(
                f"--fail-under '{item}': '{name}' is not among the run's metrics "
                f"({', '.join(metrics)}); add it with --metrics",
                param="fail_under",
            )
        out[name] = value
    return out


def gate_failures(
    summary: Mapping[str, MetricSummary], thresholds: Mapping[str, float]
) -> list[str]:
    """One line per failed threshold (empty when the gate passes)."""
    failures = []
    for name, threshold in thresholds.items():
        s = summary.get(name)
        if s is None or s.mean is None:
            failures.append(f"{name}: no case was scored (all {s.errors if s else 0} errors)")
        elif s.mean < threshold:
            failures.append(f"{name}: {s.mean:.4f} < {threshold:g}")
    return failures
