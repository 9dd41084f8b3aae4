"""Policies: who gets which guards, configuration mistakes caught at start-up, the moderation
guard by embeddings and by a judge model, and `trace: masked`."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmforge.core.config import EmbeddingConfig, GuardConfig, GuardSpec
from llmforge.core.errors import ConfigError
from llmforge.core.settings import load_settings
from llmforge.core.types import Message
from llmforge.guard import GuardContext, GuardPipeline
from llmforge.guard.moderation import ModerationGuard
from llmforge.models.fake import FakeChatModel
from llmforge.models.sbert import SentenceTransformerEmbedder
from tests.guard.conftest import guard_minilm

PII = {"name": "pii", "type": "pii", "action": "mask"}


def pipeline(**config: object) -> GuardPipeline:
    return GuardPipeline(GuardConfig.model_validate({"guards": [PII], **config}))


def test_a_keys_policy_beats_the_models_which_beats_the_default() -> None:
    p = pipeline(
        policies={"a": {"input": ["pii"]}, "b": {"input": ["pii"]}, "c": {}},
        models={"m": "b"},
        keys={"key_1": "a", "team": "c"},
        default="c",
    )
    assert p.policy_for("m", "key_1", "x").name == "a"  # type: ignore[union-attr]
    assert p.policy_for("m", "key_2", "team").name == "c"  # type: ignore[union-attr]
    assert p.policy_for("m", None, None).name == "b"  # type: ignore[union-attr]
    assert p.policy_for("other", None, None).name == "c"  # type: ignore[union-attr]
    assert pipeline(policies={"a": {}}, models={"m": "a"}).screen("other") is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"policies": {"a": {"input": ["nope"]}}}, "unknown guard(s) nope"),
        ({"policies": {"a": {}}, "models": {"m": "b"}}, "unknown polic(ies) b"),
        ({"guards": [PII, PII]}, "duplicate name(s) pii"),
    ],
)
def test_configuration_mistakes_name_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(None, guard={"guards": [PII], **config})


def test_a_misspelt_model_name_stops_start_up() -> None:
    config = GuardConfig.model_validate({"guards": [PII], "policies": {"a": {}},
                                         "models": {"lcoal": "a"}})  # fmt: skip
    with pytest.raises(ConfigError, match="lcoal"):
        GuardPipeline(config, known_models=["local"])


def test_an_unknown_guard_type_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="injection, keywords, moderation, pii"):
        pipeline(guards=[{"name": "x", "type": "regex"}])


async def test_trace_masked_keeps_personal_data_out_of_traces_only() -> None:
    policies = {"a": {"input": ["pii"], "trace": "masked"}}
    guards = [{**PII, "action": "allow"}]
    p = GuardPipeline(
        GuardConfig.model_validate({"guards": guards, "policies": policies, "default": "a"})
    )
    screen = p.screen("m")
    assert screen is not None
    messages = [Message(role="user", content="I am bob@x.example")]
    assert await screen.check_input(messages) == messages  # the model sees it as it is
    assert screen.masks_traces and screen.scrub("I am bob@x.example") == "I am [EMAIL_1]"


async def test_moderation_refuses_topics_by_embedding_similarity(onnx_cache: Path) -> None:
    embedder = SentenceTransformerEmbedder(EmbeddingConfig(**guard_minilm(onnx_cache)))
    spec = GuardSpec.model_validate(
        {
            "name": "topics",
            "type": "moderation",
            "action": "refuse",
            "embedding": "guard-minilm",
            "topics": [{"name": "medical dosing", "examples": [
                "How many milligrams of this drug should I take?",
                "What dose of ibuprofen is safe for a child?"]}],
        }
    )  # fmt: skip
    guard = ModerationGuard(spec, GuardContext(embedder=lambda name: embedder))
    hit = await guard.check("What is the right dose of paracetamol for my son?", "input")
    assert hit.action == "refuse" and "medical dosing" in hit.reason
    assert (await guard.check("Recommend a good book about sailing.", "input")).action == "allow"
    await embedder.aclose()


async def test_moderation_by_a_judge_model() -> None:
    spec = GuardSpec.model_validate(
        {"name": "t", "type": "moderation", "judge": "j", "action": "block",
         "topics": [{"name": "elections", "examples": ["Who should I vote for?"]}]}
    )  # fmt: skip
    yes = ModerationGuard(spec, GuardContext(chat=lambda name: FakeChatModel(["Yes."])))
    no = ModerationGuard(spec, GuardContext(chat=lambda name: FakeChatModel(["no"])))
    assert (await yes.check("Who is the best candidate?", "input")).action == "block"
    assert (await no.check("Who is the best candidate?", "input")).action == "allow"
