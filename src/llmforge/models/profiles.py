"""Vendor profiles: what differs between hosted and self-hosted model servers, as data.

A `Profile` is a provider name's default endpoint (`base_url`, `api_key_env`) and what is known
about well-known model ids on it (context window, price per Mtok, tool calling, JSON mode). The
factories of the `openai`-compatible client and of the `anthropic` adapter call `fill(config)`,
which copies those defaults into the keys a model's config leaves unset; explicit config always
wins. Adding a vendor that speaks the OpenAI protocol is one entry here plus one entry point.

The endpoint is filled as a pair: only a config that names no `base_url` gets the vendor's
`api_key_env`, so a vendor's key is never sent to a server the user chose unless they say so
(`api_key_env: null` next to a default `base_url` sends no key at all).

This module is data and two pure functions; it builds no client, reads no environment and does no
I/O. Prices are list prices when written down (USD, no caching or batch discounts) and only
defaults: set `price:` in llmforge.yaml to bill what you actually pay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from llmforge.core.config import EmbeddingConfig, ModelConfig, Price


@dataclass(frozen=True)
class ModelFacts:
    """What a vendor publishes about one model id."""

    context_length: int | None = None
    price: Price | None = None
    tools: bool = True
    json_mode: bool = True


@dataclass(frozen=True)
class Profile:
    """A provider's defaults. Every field is optional: an empty profile fills nothing."""

    base_url: str | None = None
    api_key_env: str | None = None
    models: Mapping[str, ModelFacts] = field(default_factory=dict)


def _usd(input_per_mtok: float, output_per_mtok: float) -> Price:
    return Price(input_per_mtok=input_per_mtok, output_per_mtok=output_per_mtok)


_GPT = {
    "gpt-4o": ModelFacts(128_000, _usd(2.5, 10.0)),
    "gpt-4o-mini": ModelFacts(128_000, _usd(0.15, 0.6)),
    "gpt-4.1": ModelFacts(1_047_576, _usd(2.0, 8.0)),
    "gpt-4.1-mini": ModelFacts(1_047_576, _usd(0.4, 1.6)),
    "gpt-4.1-nano": ModelFacts(1_047_576, _usd(0.1, 0.4)),
    "o3-mini": ModelFacts(200_000, _usd(1.1, 4.4)),
}
# DeepSeek's list prices from 2025-09-05 (cache-miss input); both ids serve the same model.
_DEEPSEEK = {
    "deepseek-chat": ModelFacts(131_072, _usd(0.56, 1.68)),
    "deepseek-reasoner": ModelFacts(131_072, _usd(0.56, 1.68), tools=False),
}
# The Messages API has no JSON mode (the adapter answers `response_format` through a forced tool);
# tools are supported and translated.
_CLAUDE = {
    model_id: ModelFacts(200_000, price, json_mode=False)
    for model_id, price in {
        "claude-opus-4-1-20250805": _usd(15.0, 75.0),
        "claude-opus-4-20250514": _usd(15.0, 75.0),
        "claude-sonnet-4-20250514": _usd(3.0, 15.0),
        "claude-3-7-sonnet-20250219": _usd(3.0, 15.0),
        "claude-3-5-haiku-20241022": _usd(0.8, 4.0),
        "claude-3-5-haiku-latest": _usd(0.8, 4.0),
        "claude-3-haiku-20240307": _usd(0.25, 1.25),
    }.items()
}

PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        "openai": Profile("https://api.openai.com/v1", "OPENAI_API_KEY", _GPT),
        "deepseek": Profile("https://api.deepseek.com", "DEEPSEEK_API_KEY", _DEEPSEEK),
        "qwen": Profile("https://dashscope.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY"),
        "vllm": Profile("http://127.0.0.1:8000/v1"),
        "llama-server": Profile("http://127.0.0.1:8080/v1"),
        "ollama": Profile("http://127.0.0.1:11434/v1"),
        "anthropic": Profile("https://api.anthropic.com", "ANTHROPIC_API_KEY", _CLAUDE),
    }
)

C = TypeVar("C", ModelConfig, EmbeddingConfig)


def profile(provider: str) -> Profile:
    """The provider's profile; an empty one for a provider without one (e.g. a plugin's)."""
    return PROFILES.get(provider, Profile())


def facts(provider: str, model_id: str) -> ModelFacts | None:
    """What the provider's profile knows about `model_id`, if anything."""
    return profile(provider).models.get(model_id)


def fill(config: C) -> C:
    """`config` with its provider's defaults (endpoint, model facts) in the keys it leaves unset."""
    p = profile(config.provider)
    update: dict[str, Any] = {}
    if config.base_url is None and p.base_url is not None:
        update["base_url"] = p.base_url
        if "api_key_env" not in config.model_fields_set:
            update["api_key_env"] = p.api_key_env
    filled = config.model_copy(update=update) if update else config
    return fill_facts(filled) if isinstance(filled, ModelConfig) else filled


def fill_facts(config: ModelConfig) -> ModelConfig:
    """Only the published facts (context window, price), never the endpoint: what billing and the
    router read from a model's own config, whatever its deployments point at."""
    known = profile(config.provider).models.get(config.model_id or config.name)
    if known is None:
        return config
    update: dict[str, Any] = {}
    if config.context_length is None and known.context_length:
        update["context_length"] = known.context_length
    if known.price is not None and "price" not in config.model_fields_set:
        update["price"] = known.price
    return config.model_copy(update=update) if update else config
