"""The LLM judge with a scripted fake model: malformed judgements are retried, then recorded as
errors (never a silent 0); sampled judgements report their spread."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import pytest

from llmforge.core.config import ModelConfig
from llmforge.core.types import Message
from llmforge.evals import Case, MetricOptions, Output, Score, build_metrics
from llmforge.evals.judge import Judge, JudgeError, Rating, extract_json
from llmforge.models import ModelCatalog

CASE = Case(
    id="c1",
    input="What is the capital of France?",
    expected="Paris",
    context=["Paris is the capital of France."],
)


def judge_with(
    responses: Sequence[str], samples: int = 1, judge_attempts: int = 3
) -> MetricOptions:
    catalog = ModelCatalog(
        [ModelConfig(name="judge", provider="fake", responses=list(responses))], []
    )
    return MetricOptions(
        judge=catalog.chat("judge"), samples=samples, judge_attempts=judge_attempts
    )


async def score(metric: str, options: MetricOptions, output: str = "Paris") -> Score:
    [m] = build_metrics([metric], options)
    return await m.score(CASE, Output(text=output))


async def test_a_malformed_judgement_is_retried_and_the_valid_one_counts() -> None:
    options = judge_with(["Sure! The answer looks good.", '{"reasoning": "correct", "score": 5}'])
    s = await score("rubric", options)
    assert s.error is None and s.value == 1.0
    assert s.details["judgements"] == [{"reasoning": "correct", "score": 5}]


async def test_an_out_of_range_grade_is_retried_too() -> None:
    options = judge_with(['{"reasoning": "meh", "score": 9}', '{"reasoning": "meh", "score": 2}'])
    s = await score("rubric", options)
    assert s.value == pytest.approx(0.25)  # (2 - 1) / 4


async def test_an_always_malformed_judge_is_recorded_as_an_error_not_zero() -> None:
    options = judge_with(["{not json", "score: 5"], judge_attempts=3)
    s = await score("rubric", options)
    assert s.value is None
    assert s.error is not None and "no valid judgement in 3 attempts" in s.error


async def test_json_wrapped_in_prose_or_a_fence_is_accepted() -> None:
    assert extract_json('Here:\n```json\n{"score": 3}\n```') == {"score": 3}
    assert extract_json('My verdict is {"score": 4} overall.') == {"score": 4}
    with pytest.raises(ValueError):
        extract_json("no braces at all")


async def test_judge_raises_after_its_attempts() -> None:
    catalog = ModelCatalog([ModelConfig(name="j", provider="fake", responses=["nope"])], [])
    with pytest.raises(JudgeError, match=r"in 2 attempts.*last answer: 'nope'"):
        await Judge(catalog.chat("j"), attempts=2).ask([], Rating)


async def test_sampled_judgements_report_mean_and_spread() -> None:
    replies = [f'{{"reasoning": "r", "score": {g}}}' for g in (5, 3, 1)]
    s = await score("answer_relevancy", judge_with(replies, samples=3))
    assert sorted(s.samples) == [0.0, 0.5, 1.0]
    assert s.value == pytest.approx(0.5)
    assert s.spread == pytest.approx(statistics.pstdev([0.0, 0.5, 1.0]))


async def test_faithfulness_is_the_share_of_supported_claims() -> None:
    reply = (
        '{"claims": [{"claim": "Paris is the capital", "supported": true},'
        ' {"claim": "Paris has 40 million people", "supported": false}]}'
    )
    s = await score("faithfulness", judge_with([reply]))
    assert s.value == pytest.approx(0.5)


async def test_faithfulness_without_context_is_an_error() -> None:
    [m] = build_metrics(["faithfulness"], judge_with(['{"claims": []}']))
    s = await m.score(Case(input="q", expected="a"), Output(text="a"))
    assert s.value is None and "context" in (s.error or "")


async def test_pairwise_alternates_positions_to_cancel_position_bias() -> None:
    # a judge that always prefers the first answer: once ours is first, once the reference
    s = await score("pairwise", judge_with(['{"reasoning": "first", "winner": "A"}'], samples=2))
    assert sorted(s.samples) == [0.0, 1.0] and s.value == pytest.approx(0.5)


async def test_an_openai_compatible_judge_gets_the_schema_as_response_format() -> None:
    from llmforge.models.openai_compat import OpenAICompatChatModel
    from tests.fakes.openai_upstream import FakeOpenAI
    from tests.fakes.server import serve

    fake = FakeOpenAI()  # echoes the last user message
    with serve(fake.app) as base:
        remote = OpenAICompatChatModel(
            ModelConfig(name="remote", provider="openai", base_url=base + "/v1")
        )
        try:
            verdict = await Judge(remote).ask(
                [Message(role="user", content='{"reasoning": "fine", "score": 4}')], Rating
            )
        finally:
            await remote.aclose()
    assert verdict.score == 4
    sent = fake.requests[-1]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": Rating.model_json_schema()},
    }
    assert "json_schema" not in sent
