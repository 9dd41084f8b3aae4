"""A live gateway on 127.0.0.1 with the real local model, the real embedder and scripted fakes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmforge.core.settings import Settings, load_settings
from llmforge.gateway import create_app
from tests.fakes.server import serve

MODELS = [
    {
        "name": "local",
        "provider": "llamacpp",
        "path": "builtin:smollm2",
        "max_queue": 2,
        "context_length": 2048,
    },
    {"name": "fake", "provider": "fake", "responses": ["Hello from the fake model."]},
    {
        "name": "slow",
        "provider": "fake",
        "responses": ["one two three four five six"],
        "delay_s": 0.05,
    },
    {
        "name": "unreachable",
        "provider": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "timeout_s": 2,
    },
]
EMBEDDINGS = [
    {"name": "minilm", "provider": "sentence-transformers", "path": "builtin:all-minilm-l6-v2"},
    {"name": "hash", "provider": "fake", "dimensions": 8},
]


def gateway_settings(tmp: Path, **overrides: object) -> Settings:
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'gw.db'}",
        models=MODELS,
        embeddings=EMBEDDINGS,
        **overrides,
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    settings = gateway_settings(
        tmp_path_factory.mktemp("gw"), server={"max_body_bytes": 64 * 1024, "preload": True}
    )
    with serve(create_app(settings)) as base:
        yield base, settings
