"""The runner in-process: results stored per case, outputs cached across runs, errors counted
apart from scores, resumption of a stored run, and the gate over summaries."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from llmforge.core.config import ModelConfig
from llmforge.core.db import open_engine
from llmforge.core.errors import InvalidRequestError
from llmforge.core.types import Sampling
from llmforge.evals import (
    Case,
    Dataset,
    EvalStore,
    MetricOptions,
    ModelTarget,
    RetrievalTarget,
    RunInfo,
    RunSpec,
    build_metrics,
    gate_failures,
    parse_thresholds,
    run_eval,
)
from llmforge.evals.dataset import with_ids
from llmforge.models import ModelCatalog

CASES = with_ids(
    [
        Case(input="Capital of France?", expected="Paris"),
        Case(input="Capital of Italy?", expected="Rome"),
        Case(input="Capital of Spain?", expected="Madrid"),
    ]
)
DATA = Dataset(name="capitals", digest="d1", cases=CASES)


def catalog(*responses: str, name: str = "m") -> ModelCatalog:
    return ModelCatalog([ModelConfig(name=name, provider="fake", responses=list(responses))], [])


def target(cat: ModelCatalog, name: str = "m") -> ModelTarget:
    return ModelTarget(name, cat.chat(name), cat.config(name), Sampling(max_tokens=16))


async def run(
    store: EvalStore, cat: ModelCatalog, metrics: Sequence[str], **spec: object
) -> RunInfo:
    # one case at a time: the scripted fake answers in call order
    s = RunSpec(dataset=DATA, target="m", metrics=list(metrics), concurrency=1, **spec)  # type: ignore[arg-type]
    return await run_eval(s, store, target(cat), build_metrics(list(metrics), MetricOptions()))


async def test_a_run_stores_every_case_and_a_summary(db_url: str) -> None:
    store = EvalStore(open_engine(db_url))
    cat = catalog("Paris", "Rome.", "Barcelona")
    spec = RunSpec(dataset=DATA, target="m", metrics=["exact_match", "token_f1"], concurrency=1)
    info = await run_eval(spec, store, target(cat), build_metrics(spec.metrics, MetricOptions()))
    assert info.status == "done" and info.done == 3 and info.id == spec.default_id()
    assert info.summary["exact_match"].mean == pytest.approx(2 / 3)
    assert info.summary["exact_match"].errors == 0
    results = store.results(info.id)
    assert [r.output.text for r in results] == ["Paris", "Rome.", "Barcelona"]
    assert [r.scores["exact_match"].value for r in results] == [1.0, 1.0, 0.0]


async def test_outputs_are_cached_so_other_metrics_do_not_regenerate(db_url: str) -> None:
    store = EvalStore(open_engine(db_url))
    cat = catalog("Paris", "Rome", "Madrid", "WRONG", "WRONG", "WRONG")
    first = await run(store, cat, ["exact_match"])
    # the fake would now answer WRONG: a second run with other metrics must reuse the outputs
    second = await run(store, cat, ["token_f1", "rouge_l"])
    assert first.id != second.id
    assert [r.output.text for r in store.results(second.id)] == ["Paris", "Rome", "Madrid"]
    fresh = await run(store, cat, ["token_f1"], use_cache=False)
    assert {r.output.text for r in store.results(fresh.id)} == {"WRONG"}


async def test_resuming_a_stored_run_scores_only_the_missing_cases(db_url: str) -> None:
    store = EvalStore(open_engine(db_url))
    partial = DATA.model_copy(update={"cases": CASES[:2]})
    spec = RunSpec(dataset=partial, target="m", metrics=["exact_match"], run_id="r1", concurrency=1)
    await run_eval(
        spec,
        store,
        target(catalog("Paris", "Rome")),
        build_metrics(["exact_match"], MetricOptions()),
    )
    stored = {r.case_id: r for r in store.results("r1")}
    # the same run over the full dataset (same digest stands for "same run"): only case 3 runs
    spec = RunSpec(dataset=DATA, target="m", metrics=["exact_match"], run_id="r1")
    info = await run_eval(
        spec, store, target(catalog("Madrid")), build_metrics(["exact_match"], MetricOptions())
    )
    results = store.results("r1")
    assert info.done == 3 and len(results) == 3
    assert [r.output.text for r in results] == ["Paris", "Rome", "Madrid"]
    assert all(stored[r.case_id] == r for r in results[:2])
    assert info.summary["exact_match"].mean == 1.0


async def test_reusing_a_run_id_for_another_setup_is_refused(db_url: str) -> None:
    store = EvalStore(open_engine(db_url))
    await run(store, catalog("x"), ["exact_match"], run_id="same")
    with pytest.raises(InvalidRequestError, match="pass another --run-id"):
        await run(store, catalog("x"), ["token_f1"], run_id="same")


async def test_a_judge_that_never_answers_validly_gives_errors_and_fails_the_gate(
    db_url: str,
) -> None:
    store = EvalStore(open_engine(db_url))
    cat = ModelCatalog(
        [
            ModelConfig(name="m", provider="fake", responses=["Paris"]),
            ModelConfig(name="judge", provider="fake", responses=["I cannot answer in JSON"]),
        ],
        [],
    )
    options = MetricOptions(judge=cat.chat("judge"), judge_attempts=2)
    spec = RunSpec(dataset=DATA, target="m", metrics=["rubric"], judge="judge")
    info = await run_eval(spec, store, target(cat), build_metrics(["rubric"], options))
    summary = info.summary["rubric"]
    assert (summary.mean, summary.scored, summary.errors) == (None, 0, 3)
    assert all(
        "no valid judgement" in (r.scores["rubric"].error or "") for r in store.results(info.id)
    )
    assert gate_failures(info.summary, {"rubric": 0.1}) == [
        "rubric: no case was scored (all 3 errors)"
    ]


async def test_a_failing_model_is_an_error_per_case(db_url: str) -> None:
    store = EvalStore(open_engine(db_url))
    cat = ModelCatalog(
        [ModelConfig(name="m", provider="openai", base_url="http://127.0.0.1:9/v1", timeout_s=1)],
        [],
    )
    try:
        info = await run(store, cat, ["exact_match"])
    finally:
        await cat.aclose()
    results = store.results(info.id)
    assert all(r.error and "cannot reach upstream" in r.error for r in results)
    assert info.summary["exact_match"].errors == 3


async def test_retrieval_target_maps_hits_to_relevant_names() -> None:
    async def search(query: str, k: int) -> list[tuple[str, str]]:
        return [("c1", "/docs/a.md"), ("c2", "/docs/b.md"), ("c3", "/docs/c.md")][:k]

    out = await RetrievalTarget("kb:docs", search, 3).produce(
        Case(input="q", relevant=["b.md", "c3"])
    )
    assert out.retrieved == ["c1", "b.md", "c3"]


def test_thresholds_are_checked_before_running() -> None:
    assert parse_thresholds(["exact_match=0.8"], ["exact_match"]) == {"exact_match": 0.8}
    with pytest.raises(InvalidRequestError, match="not among the run's metrics"):
        parse_thresholds(["rouge_l=0.5"], ["exact_match"])
    with pytest.raises(InvalidRequestError, match="write METRIC=VALUE"):
        parse_thresholds(["exact_match>0.5"], ["exact_match"])
