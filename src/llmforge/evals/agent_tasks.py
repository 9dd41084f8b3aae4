"""Scoring agents on a task set: the agent as an eval target, and the agent metrics.

A task is an ordinary dataset case (`input`, optional `expected`), with the tools it should call
in `metadata.expected_tools` (names, in any order). `AgentTarget` runs the agent on each case (a
fresh thread; the run's answer, the tools it called, its steps, cost and status become the
`Output`), and three metrics score it:

- `task_success`: 1 when the run finished (`done`) and its answer contains the reference
  (`expected`, case and spacing ignored); without a reference, use the judge's `rubric` metric.
- `tool_call_accuracy`: F1 of the tools called against `expected_tools` (as sets; a case without
  the key is not scored).
- `within_budget`: 1 unless the run stopped on a budget.

`agent_summary(results)` adds what a mean of scores does not show: steps and cost per task. The
runtime (and so the models) come from the caller; outputs are never cached (a run has effects).
"""

from __future__ import annotations

import asyncio
import re
import statistics
from collections.abc import Sequence

from pydantic import BaseModel

from llmforge.agents import AgentRuntime, describe
from llmforge.evals.base import MetricOptions, Output, Score, metric_registry
from llmforge.evals.dataset import Case
from llmforge.evals.store import CaseResult

AGENT_METRICS = ["task_success", "tool_call_accuracy", "within_budget"]


class AgentTarget:
    def __init__(self, runtime: AgentRuntime, agent: str, timeout_s: float = 600.0) -> None:
        runtime.config(agent)  # unknown agent: fail before any case
        self.name = f"agent:{agent}"
        self._runtime = runtime
        self._agent = agent
        self._timeout_s = timeout_s

    def cache_key(self, case: Case) -> None:
        return None

    async def produce(self, case: Case) -> Output:
        run = await self._runtime.start_run(self._agent, case.messages(), user_id=f"eval:{case.id}")
        run = await self._runtime.wait(run.id, self._timeout_s)
        calls = await asyncio.to_thread(self._runtime.store.calls, run.id)
        return Output(
            text=run.output if run.status == "done" else describe(run),
            tool_calls=[c.name for c in calls],
            steps=run.usage.steps,
            cost_usd=run.usage.cost_usd,
            status=run.status,
        )


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


class TaskSuccess:
    name = "task_success"

    async def score(self, case: Case, output: Output) -> Score:
        if case.expected is None:
            return Score.failed("no `expected` answer: score success with --judge and rubric")
        ok = output.status in (None, "done") and _norm(case.expected) in _norm(output.text)
        return Score.of(1.0 if ok else 0.0, status=output.status)


class ToolCallAccuracy:
    name = "tool_call_accuracy"

    async def score(self, case: Case, output: Output) -> Score:
        expected = case.metadata.get("expected_tools")
        if not isinstance(expected, list):
            return Score.failed("no `metadata.expected_tools` in the case")
        want, got = set(map(str, expected)), set(output.tool_calls)
        if not want and not got:
            return Score.of(1.0, called=[])
        hits = len(want & got)
        precision = hits / len(got) if got else 0.0
        recall = hits / len(want) if want else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        return Score.of(f1, called=output.tool_calls, expected=sorted(want))


class WithinBudget:
    name = "within_budget"

    async def score(self, case: Case, output: Output) -> Score:
        return Score.of(0.0 if output.status == "budget_exceeded" else 1.0)


def register_agent_metrics() -> None:
    """Make the agent metrics known to `build_metrics` (idempotent)."""
    metric_registry.register("task_success", lambda _o: TaskSuccess())
    metric_registry.register("tool_call_accuracy", lambda _o: ToolCallAccuracy())
    metric_registry.register("within_budget", lambda _o: WithinBudget())


class AgentSummary(BaseModel):
    tasks: int
    success_rate: float | None
    mean_steps: float | None
    mean_cost_usd: float | None
    total_cost_usd: float


def agent_summary(results: Sequence[CaseResult]) -> AgentSummary:
    steps = [r.output.steps for r in results if r.output.steps is not None]
    costs = [r.output.cost_usd for r in results if r.output.cost_usd is not None]
    success = [
        s.value for r in results if (s := r.scores.get("task_success")) and s.value is not None
    ]
    return AgentSummary(
        tasks=len(results),
        success_rate=statistics.fmean(success) if success else None,
        mean_steps=statistics.fmean(steps) if steps else None,
        mean_cost_usd=statistics.fmean(costs) if costs else None,
        total_cost_usd=sum(costs),
    )


__all__ = [
    "AGENT_METRICS",
    "AgentSummary",
    "AgentTarget",
    "MetricOptions",
    "agent_summary",
    "register_agent_metrics",
]
