"""Vendor profiles fill the defaults a model's config leaves unset; explicit config always wins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmforge.core.config import EmbeddingConfig, ModelConfig, Price
from llmforge.core.errors import ConfigError, UpstreamError
from llmforge.core.types import Message, Sampling
from llmforge.models import ChatModel, ModelCatalog, chat_models
from llmforge.models.anthropic import AnthropicChatModel
from llmforge.models.openai_compat import OpenAICompatChatModel
from llmforge.models.profiles import PROFILES, facts, fill
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import serve

HELLO = [Message(role="user", content="hello profile")]
OPENAI_COMPATIBLE = ["openai", "deepseek", "qwen", "vllm", "llama-server", "ollama"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve(fake.app) as base:
        yield fake, base + "/v1"


@pytest.mark.parametrize("provider", [*OPENAI_COMPATIBLE, "anthropic"])
async def test_each_profile_provider_is_registered_and_builds_its_client(provider: str) -> None:
    assert provider in PROFILES and provider in chat_models.names()
    backend = chat_models.get(provider)(ModelConfig(name="m", provider=provider))
    assert isinstance(backend, ChatModel)
    expected = AnthropicChatModel if provider == "anthropic" else OpenAICompatChatModel
    assert isinstance(backend, expected)
    await backend.aclose()


@pytest.mark.parametrize(
    ("provider", "base_url", "key_env"),
    [
        ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        ("deepseek", "https://api.deepseek.com", "DEEPSEEK_API_KEY"),
        ("qwen", "https://dashscope.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY"),
        ("vllm", "http://127.0.0.1:8000/v1", None),
        ("llama-server", "http://127.0.0.1:8080/v1", None),
        ("ollama", "http://127.0.0.1:11434/v1", None),
        ("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    ],
)
def test_an_unset_endpoint_comes_from_the_profile(
    provider: str, base_url: str, key_env: str | None
) -> None:
    filled = fill(ModelConfig(name="m", provider=provider))
    assert (filled.base_url, filled.api_key_env) == (base_url, key_env)


def test_known_model_ids_get_context_length_and_price() -> None:
    filled = fill(ModelConfig(name="ds", provider="deepseek", model_id="deepseek-chat"))
    assert filled.context_length == 131_072
    assert filled.price.input_per_mtok > 0 and filled.price.output_per_mtok > 0
    by_name = fill(ModelConfig(name="gpt-4o-mini", provider="openai"))  # model_id defaults to name
    assert by_name.price == Price(input_per_mtok=0.15, output_per_mtok=0.6)
    claude = facts("anthropic", "claude-sonnet-4-20250514")
    assert claude is not None and claude.context_length == 200_000 and not claude.json_mode
    unknown = fill(ModelConfig(name="my-finetune", provider="openai"))
    assert unknown.context_length is None and unknown.price == Price()


def test_explicit_config_wins_over_the_profile() -> None:
    mine = ModelConfig(
        name="ds",
        provider="deepseek",
        model_id="deepseek-chat",
        base_url="https://proxy.example/v1",
        api_key_env="MY_KEY",
        context_length=4096,
        price=Price(input_per_mtok=9, output_per_mtok=9),
    )
    assert fill(mine) == mine
    free = fill(ModelConfig(name="ds", provider="deepseek", model_id="deepseek-chat", price={}))
    assert free.price == Price()  # an explicit `price: {}` means free, not "look it up"


def test_a_vendor_key_is_not_sent_to_a_server_the_user_chose() -> None:
    own_server = fill(ModelConfig(name="m", provider="openai", base_url="http://10.0.0.5/v1"))
    assert own_server.api_key_env is None
    no_key = fill(ModelConfig(name="m", provider="deepseek", api_key_env=None))
    assert (no_key.base_url, no_key.api_key_env) == ("https://api.deepseek.com", None)


def test_providers_without_a_profile_are_left_alone() -> None:
    config = ModelConfig(name="m", provider="my-plugin")
    assert fill(config) is config
    embedding = fill(EmbeddingConfig(name="e", provider="openai"))
    assert embedding.base_url == "https://api.openai.com/v1"


async def test_profile_client_needs_the_vendors_key_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    backend = chat_models.get("deepseek")(ModelConfig(name="ds", provider="deepseek"))
    with pytest.raises(ConfigError, match="DEEPSEEK_API_KEY is not set"):
        await backend.complete(HELLO, Sampling())
    await backend.aclose()


async def test_local_server_profiles_call_their_default_address() -> None:
    backend = chat_models.get("ollama")(ModelConfig(name="llama3", provider="ollama"))
    with pytest.raises(UpstreamError, match=r"cannot reach upstream http://127\.0\.0\.1:11434/v1"):
        await backend.complete(HELLO, Sampling())
    await backend.aclose()


@pytest.mark.parametrize("provider", OPENAI_COMPATIBLE)
async def test_profile_provider_talks_to_an_explicit_base_url(
    upstream: tuple[FakeOpenAI, str], provider: str
) -> None:
    catalog = ModelCatalog(
        [ModelConfig(name="m", provider=provider, base_url=upstream[1], model_id="echo")], []
    )
    out = await catalog.chat("m").complete(HELLO, Sampling())
    assert out.text == "hello profile"
    assert "authorization" not in upstream[0].headers[-1]
    await catalog.aclose()


def test_published_facts_reach_billing_and_routing_but_not_the_endpoint() -> None:
    from llmforge.models import ModelCatalog

    catalog = ModelCatalog(
        [
            ModelConfig(
                name="gpt-4o",
                provider="openai",
                deployments=[{"base_url": "http://127.0.0.1:1/v1"}],
            )
        ],
        [],
    )
    cfg = catalog.config("gpt-4o")
    assert cfg.price.output_per_mtok == 10.0 and cfg.context_length == 128_000
    (dep,) = catalog.deployments("gpt-4o")
    assert dep.config.base_url == "http://127.0.0.1:1/v1" and dep.config.api_key_env is None
