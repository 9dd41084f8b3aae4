"""Model backends behind two small protocols, `ChatModel` and `Embedder`, and the catalog of
configured ones.

Backends (registered through entry points, exactly as a plugin would): `llamacpp` (a GGUF, through
a managed llama-server or in-process), `openai` (any OpenAI-compatible server), `vllm` (a managed
`vllm serve` of a local folder, or a remote one), `anthropic`, `fake` (scripted); embedders
`sentence-transformers`, `openai`, `fake`.
"""

from llmforge.models.base import (
    ChatModel,
    CompletionBuilder,
    Embedder,
    TextModel,
    TokenCounter,
    chat_models,
    collect,
    embedders,
)
from llmforge.models.catalog import Deployment, ModelCatalog, ModelInfo

__all__ = [
    "ChatModel",
    "CompletionBuilder",
    "Deployment",
    "Embedder",
    "ModelCatalog",
    "ModelInfo",
    "TextModel",
    "TokenCounter",
    "chat_models",
    "collect",
    "embedders",
]
