"""The evals package scores an agent on a task set: success by reference, tool-call accuracy,
steps and cost per task."""

from __future__ import annotations

from pathlib import Path

from llmforge.agents import AgentRuntime, CatalogModels
from llmforge.core.db import open_engine
from llmforge.evals import EvalStore, RunSpec, build_metrics, load_dataset, run_eval
from llmforge.evals.agent_tasks import (
    AGENT_METRICS,
    AgentTarget,
    agent_summary,
    register_agent_metrics,
)
from llmforge.evals.base import MetricOptions
from llmforge.models import ModelCatalog
from tests.agents.conftest import agent_settings
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.reply import Call, Reply

EXAMPLE = Path(__file__).parents[2] / "examples" / "agents" / "tasks.jsonl"


async def test_agent_scored_on_a_task_set(upstream: tuple[str, FakeOpenAI], tmp_path: Path) -> None:
    base, fake = upstream
    fake.reset()
    settings = agent_settings(tmp_path, base)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        '{"id": "mul", "input": "What is 17 * 23?", "expected": "391",'
        ' "metadata": {"expected_tools": ["calculator"]}}\n'
        '{"id": "add", "input": "What is 2 + 3?", "expected": "5",'
        ' "metadata": {"expected_tools": ["calculator"]}}\n'
    )
    fake.respond(
        Reply(calls=(Call("calculator", '{"expression": "17 * 23"}'),)),
        Reply(text="17 * 23 is 391."),
        Reply(text="It is 6."),  # wrong, and without the tool
    )
    catalog = ModelCatalog.from_settings(settings)
    runtime = AgentRuntime(settings, CatalogModels(catalog), embedder=catalog.embedder)
    register_agent_metrics()
    engine = open_engine(settings.database)
    try:
        spec = RunSpec(
            dataset=load_dataset(tasks), target="agent:calc", metrics=AGENT_METRICS, concurrency=1
        )
        store = EvalStore(engine)
        metrics = build_metrics(AGENT_METRICS, MetricOptions())
        info = await run_eval(spec, store, AgentTarget(runtime, "calc"), metrics)
        results = {r.case_id: r for r in store.results(info.id)}
    finally:
        await runtime.aclose()
        await catalog.aclose()
        engine.dispose()
    assert results["mul"].scores["task_success"].value == 1.0
    assert results["mul"].scores["tool_call_accuracy"].value == 1.0
    assert results["add"].scores["task_success"].value == 0.0
    assert results["add"].scores["tool_call_accuracy"].value == 0.0
    assert results["mul"].output.tool_calls == ["calculator"] and results["mul"].output.steps == 2
    summary = agent_summary(list(results.values()))
    assert summary.tasks == 2 and summary.success_rate == 0.5 and summary.mean_steps == 1.5
    assert summary.total_cost_usd > 0
    assert info.summary["task_success"].mean == 0.5


def test_the_example_task_set_loads() -> None:
    dataset = load_dataset(EXAMPLE)
    assert len(dataset.cases) >= 5
    assert all(isinstance(c.metadata.get("expected_tools"), list) for c in dataset.cases)
