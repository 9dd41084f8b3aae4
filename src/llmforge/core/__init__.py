"""The thin core: settings and config schema, errors, registry, database engine and migrations,
shared types.

It imports no sibling package; every other package builds on it.
"""

from llmforge.core.config import EmbeddingConfig, ModelConfig, Price, ServerConfig, TracesConfig
from llmforge.core.db import Migration, migrate, open_engine
from llmforge.core.errors import (
    ConfigError,
    InvalidRequestError,
    LLMForgeError,
    ModelError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    UnknownNameError,
    UpstreamError,
    UpstreamTimeoutError,
)
from llmforge.core.registry import Registry
from llmforge.core.settings import Settings, load_settings
from llmforge.core.types import Completion, Delta, Embeddings, Message, Sampling, Usage

__all__ = [
    "Completion",
    "ConfigError",
    "Delta",
    "EmbeddingConfig",
    "Embeddings",
    "InvalidRequestError",
    "LLMForgeError",
    "Message",
    "Migration",
    "ModelConfig",
    "ModelError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "Price",
    "Registry",
    "Sampling",
    "ServerConfig",
    "Settings",
    "TracesConfig",
    "UnknownNameError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "Usage",
    "load_settings",
    "migrate",
    "open_engine",
]
