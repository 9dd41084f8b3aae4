"""How agents reach chat models: the `ModelClient` protocol and its catalog-only implementation.

Inside the server, the gateway hands the runtime a client that sends every call through its own
`Gateway` (router with retries and fallbacks, admission, accounting, traces tagged with the run
id); this package cannot import the gateway, so it only names the protocol. `CatalogModels`
calls the catalog's backends directly, priced from the models' `price`, for runtimes built
without a gateway (the `agent` model provider used outside the server). It adds no retries,
records no traces and has no keys to bill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from pydantic import BaseModel

from llmforge.core.config import Price
from llmforge.core.types import Completion, Message, Sampling, Usage
from llmforge.models.base import ModelContext


class ModelAnswer(BaseModel):
    """A model's answer to one agent step, what it cost, and the trace that recorded it."""

    completion: Completion
    cost_usd: float = 0.0
    trace_id: str | None = None


class ModelClient(Protocol):
    async def complete(
        self,
        model: str,
        messages: Sequence[Message],
        sampling: Sampling,
        tags: Mapping[str, str],
        key_id: str | None = None,
    ) -> ModelAnswer:
        """The model's answer; `tags` (agent, run id, step) go into its trace; `key_id`: the API
        key that started the run, which the call is admitted and billed against."""
        ...


def cost(price: Price, usage: Usage) -> float:
    return (
        usage.prompt_tokens * price.input_per_mtok + usage.completion_tokens * price.output_per_mtok
    ) / 1_000_000


class CatalogModels:
    """A ModelClient over the catalog's backends (no routing, no traces)."""

    def __init__(self, context: ModelContext) -> None:
        self._context = context

    async def complete(
        self,
        model: str,
        messages: Sequence[Message],
        sampling: Sampling,
        tags: Mapping[str, str],
        key_id: str | None = None,
    ) -> ModelAnswer:
        completion = await self._context.chat(model).complete(messages, sampling)
        settings = self._context.settings
        config = settings.model(model) if settings else None
        price = config.price if config else Price()
        return ModelAnswer(completion=completion, cost_usd=cost(price, completion.usage))
