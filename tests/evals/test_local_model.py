"""A real evaluation with the local model (greedy, tiny answers) and a real judge call whose JSON
is grammar-constrained by llama.cpp."""

from __future__ import annotations

import json

import pytest

from llmforge.core.config import ModelConfig
from llmforge.core.db import open_engine
from llmforge.core.types import Message, Sampling
from llmforge.evals import (
    Case,
    Dataset,
    EvalStore,
    MetricOptions,
    ModelTarget,
    Output,
    RunSpec,
    build_metrics,
    run_eval,
)
from llmforge.evals.judge import Rating
from llmforge.models import ModelCatalog

pytestmark = pytest.mark.slow

LOCAL = ModelConfig(name="local", provider="llamacpp", path="builtin:smollm2", context_length=1024)


async def test_a_real_run_on_the_local_model(db_url: str) -> None:
    catalog = ModelCatalog([LOCAL], [])
    cases = [
        Case(id="fr", input="What is the capital of France? Answer in one word.", expected="Paris"),
        Case(id="add", input="What is 2 + 2? Answer with the number only.", expected="4"),
    ]
    spec = RunSpec(
        dataset=Dataset(name="tiny", digest="t", cases=cases),
        target="local",
        metrics=["exact_match", "token_f1"],
        concurrency=2,
    )
    target = ModelTarget(
        "local",
        catalog.chat("local"),
        catalog.config("local"),
        Sampling(max_tokens=16, temperature=0),
    )
    store = EvalStore(open_engine(db_url))
    try:
        info = await run_eval(spec, store, target, build_metrics(spec.metrics, MetricOptions()))
    finally:
        await catalog.aclose()
    results = {r.case_id: r for r in store.results(info.id)}
    assert info.status == "done" and info.summary["token_f1"].scored == 2
    assert "Paris" in results["fr"].output.text
    assert results["fr"].scores["token_f1"].value and results["fr"].scores["token_f1"].value > 0


async def test_a_grammar_constrained_judgement_from_the_local_model_parses() -> None:
    catalog = ModelCatalog([LOCAL], [])
    model = catalog.chat("local")
    case = Case(id="fr", input="What is the capital of France?", expected="Paris")
    # one attempt only: a retry cannot hide a malformed first judgement
    [rubric] = build_metrics(["rubric"], MetricOptions(judge=model, judge_attempts=1))
    try:
        free = await model.complete(
            [Message(role="user", content="Grade the answer 'Paris' from 1 to 5 in JSON.")],
            Sampling(max_tokens=16, temperature=0),
        )
        score = await rubric.score(case, Output(text="Paris"))
    finally:
        await catalog.aclose()
    with pytest.raises(json.JSONDecodeError):  # left free, this model does not answer in JSON
        json.loads(free.text)
    assert score.error is None, score.error
    assert score.value in (0.0, 0.25, 0.5, 0.75, 1.0)
    [judgement] = score.details["judgements"]
    assert Rating.model_validate(judgement).score in (1, 2, 3, 4, 5)
