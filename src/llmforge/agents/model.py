"""Provider `agent`: an agent any OpenAI client can chat with, as a model in `models:`.

    models:
      - {name: helper, provider: agent}                  # the agent named `helper`
      - {name: researcher, provider: agent, model_id: research}

Each request is one run of the agent (`model_id`, default the model's name) on a new thread with
the conversation sent: tools are called inside the run, and the answer is the run's final message,
streamed in word-sized pieces once the run has finished (with the run's sources on the last
delta). A run that stops for approval or a budget answers with a sentence that says so and how to
go on (the run id, the approve command). Usage is the run's total over all its steps.

The runtime is the process's one `AgentRuntime`, shared through the catalog: the gateway installs
its own (model calls routed and traced by the gateway) before serving; elsewhere (`llmforge chat`,
evals) one is built over the catalog's models on first use. It does not stream tokens of
intermediate steps.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Sequence

from llmforge.agents.models import CatalogModels
from llmforge.agents.runtime import AgentRuntime, describe
from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, InvalidRequestError
from llmforge.core.types import Completion, Delta, Message, Sampling, Usage
from llmforge.models.base import ModelContext, collect

RUNTIME_KEY = "agents.runtime"


def shared_runtime(context: ModelContext) -> AgentRuntime:
    """The process's AgentRuntime (the gateway's when it installed one)."""
    settings = context.settings
    if settings is None:
        raise ConfigError("Agents need the server's settings; build the catalog with them.")

    def build() -> AgentRuntime:
        from llmforge.kb import shared_knowledge_bases
        from llmforge.models.base import embedders

        def embedder(name: str) -> object:
            cfg = next(e for e in settings.embeddings if e.name == name)
            return embedders.get(cfg.provider)(cfg)

        return AgentRuntime(
            settings,
            CatalogModels(context),
            knowledge_bases=lambda: shared_knowledge_bases(context),
            embedder=embedder,  # type: ignore[arg-type]
        )

    return context.shared(RUNTIME_KEY, build)


class AgentChatModel:
    def __init__(self, config: ModelConfig, context: ModelContext) -> None:
        self.name = config.name
        self.agent = config.model_id or config.name
        self._context = context
        settings = context.settings
        if settings is not None:
            agent = next((a for a in settings.agents.definitions if a.name == self.agent), None)
            if agent is not None and agent.model == config.name:
                raise ConfigError(
                    f"Model '{config.name}' (provider agent) runs agent '{self.agent}', whose "
                    "model is this same model: pick another `model` for the agent."
                )

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        return await collect(self.stream(messages, sampling))

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        if sampling.calls_tools:
            raise InvalidRequestError(
                f"Model '{self.name}' is an agent with its own tools; send no `tools`.",
                param="tools",
            )
        runtime = shared_runtime(self._context)
        run = await runtime.start_run(self.agent, messages, user_id=f"model:{self.name}")
        run = await runtime.wait(run.id)
        text = describe(run)
        for piece in re.findall(r"\s*\S+\s*", text) or [text]:
            yield Delta(text=piece)
        usage = Usage(
            prompt_tokens=run.usage.prompt_tokens, completion_tokens=run.usage.completion_tokens
        )
        yield Delta(finish_reason="stop", usage=usage, sources=tuple(run.sources))

    async def aclose(self) -> None:
        return None  # the runtime belongs to the catalog


def create(config: ModelConfig, context: ModelContext | None = None) -> AgentChatModel:
    if context is None:
        raise ConfigError(f"Model '{config.name}' (provider agent) must be built by a catalog.")
    return AgentChatModel(config, context)
