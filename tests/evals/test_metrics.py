"""Each metric against values computed by hand, and the registry a user picks metrics from."""

from __future__ import annotations

import math

import pytest

from llmforge.core.config import EmbeddingConfig
from llmforge.core.errors import ConfigError, UnknownNameError
from llmforge.evals import Case, MetricOptions, Output, build_metrics, metric_registry
from llmforge.evals.metrics import (
    cosine,
    exact_match,
    json_errors,
    mrr,
    ndcg_at_k,
    recall_at_k,
    rouge_l,
    token_f1,
    tokens,
)
from llmforge.models import ModelCatalog


def test_tokens_drop_case_and_punctuation_and_split_cjk_into_characters() -> None:
    assert tokens("Hello, World! 你好。") == ["hello", "world", "你", "好"]
    assert tokens("東京タワー") == ["東", "京", "タ", "ワ", "ー"]


def test_exact_match_ignores_case_spacing_and_punctuation_only() -> None:
    assert exact_match("  Paris. ", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0


def test_token_f1_by_hand() -> None:
    # 3 output tokens all in the 6-token reference: P = 1, R = 1/2, F1 = 2/3
    assert token_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0
    assert token_f1("dog", "cat") == 0.0


def test_rouge_l_by_hand() -> None:
    # LCS(police kill the gunman, police killed the gunman) = 3 of 4 on both sides
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(0.75)
    # LCS = the cat on the mat = 5 of 6
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)


def test_chinese_is_scored_per_character_not_as_one_word() -> None:
    # same five characters: full token overlap; LCS is 北京 (or 首都): 2 of 5 -> 0.4
    assert token_f1("北京是首都", "首都是北京") == pytest.approx(1.0)
    assert rouge_l("北京是首都", "首都是北京") == pytest.approx(0.4)
    assert exact_match("北京", "北京。") == 1.0


def test_cosine_by_hand() -> None:
    assert cosine([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0


def test_retrieval_metrics_by_hand() -> None:
    ranked = ["a", "x", "b", "y"]
    assert recall_at_k(ranked, ["a", "b", "c"], 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, ["a", "b", "c"], 4) == pytest.approx(2 / 3)
    assert mrr(["x", "y", "a"], ["a"]) == pytest.approx(1 / 3)
    assert mrr(["x", "y"], ["a"]) == 0.0
    # DCG = 1/log2(3) + 1/log2(4); ideal = 1 + 1/log2(3)
    expected = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["x", "a", "b"], ["a", "b"], 3) == pytest.approx(expected)
    # a relevant item retrieved twice counts once
    assert ndcg_at_k(["a", "a"], ["a"], 2) == pytest.approx(1.0)


def test_json_validity_with_and_without_a_schema() -> None:
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    assert json_errors('```json\n{"city": "Madrid"}\n```', schema) == []
    assert json_errors('{"city": 3}', schema) == ["city: 3 is not of type 'string'"]
    assert json_errors("{city: Madrid}")[0].startswith("not JSON")


async def test_metrics_from_the_registry_score_a_case() -> None:
    case = Case(id="c", input="Capital of France?", expected="Paris", relevant=["doc.md"])
    built = build_metrics(["exact_match", "token_f1", "rouge_l", "recall_at_k"], MetricOptions(k=2))
    output = Output(text="Paris.", retrieved=["other.md", "doc.md"])
    scores = {m.name: await m.score(case, output) for m in built}
    assert {n: s.value for n, s in scores.items()} == {
        "exact_match": 1.0,
        "token_f1": 1.0,
        "rouge_l": 1.0,
        "recall_at_k": 1.0,
    }


async def test_a_case_without_expected_is_an_error_not_a_zero() -> None:
    [metric] = build_metrics(["token_f1"], MetricOptions())
    score = await metric.score(Case(input="hi"), Output(text="hello"))
    assert score.value is None and "expected" in (score.error or "")


async def test_json_valid_uses_the_cases_schema() -> None:
    [metric] = build_metrics(["json_valid"], MetricOptions())
    schema = {"type": "object", "required": ["n"]}
    case = Case(input="x", metadata={"json_schema": schema})
    assert (await metric.score(case, Output(text='{"n": 1}'))).value == 1.0
    bad = await metric.score(case, Output(text='{"m": 1}'))
    assert bad.value == 0.0 and bad.details["errors"] == ["(root): 'n' is a required property"]


async def test_embedding_similarity_uses_the_configured_embedder() -> None:
    catalog = ModelCatalog([], [EmbeddingConfig(name="hash", provider="fake")])
    [metric] = build_metrics(
        ["embedding_similarity"], MetricOptions(embedder=catalog.embedder("hash"))
    )
    same = await metric.score(Case(input="q", expected="red apples"), Output(text="Red apples!"))
    other = await metric.score(Case(input="q", expected="red apples"), Output(text="blue sky"))
    assert same.value == pytest.approx(1.0)
    assert other.value is not None and other.value < 0.5


def test_every_builtin_metric_is_registered_and_unknown_names_list_them() -> None:
    assert {
        "exact_match",
        "token_f1",
        "rouge_l",
        "embedding_similarity",
        "json_valid",
        "recall_at_k",
        "mrr",
        "ndcg_at_k",
        "rubric",
        "faithfulness",
        "answer_relevancy",
        "pairwise",
    } <= set(metric_registry.names())
    with pytest.raises(UnknownNameError, match=r"Unknown metric 'bleu'\. Known: .*exact_match"):
        build_metrics(["bleu"], MetricOptions())


def test_a_judge_metric_without_a_judge_fails_before_running() -> None:
    with pytest.raises(ConfigError, match="needs a judge model; pass --judge"):
        build_metrics(["rubric"], MetricOptions())
