"""A live gateway on 127.0.0.1 with the real local model, the real embedder and scripted fakes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from llmforge.core.errors import NotFoundError
from llmforge.core.settings import Settings, load_settings
from llmforge.gateway import create_app
from llmforge.traces import Trace, TraceStore
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
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


@pytest.fixture(scope="session")
def protocol_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FastAPI]]:
    """A live gateway for the protocol tests: the real local model, and remote models behind a
    fake OpenAI and a fake Anthropic upstream that answer with tool calls (`gpt`, `claude`), with
    JSON (`gpt-json`), with every tool at once (`gpt-parallel`) or with the user's words (`echo`).
    Yields the base URL and the app."""
    openai_fake, anthropic_fake = FakeOpenAI(), FakeAnthropic()
    with serve(openai_fake.app) as oa, serve(anthropic_fake.app) as an:

        def gpt(name: str, model_id: str) -> dict[str, object]:
            return {
                "name": name,
                "provider": "openai",
                "base_url": oa + "/v1",
                "model_id": model_id,
            }

        models = [
            {**MODELS[0], "max_queue": 8},
            gpt("gpt", "tools"),
            gpt("gpt-json", "json"),
            gpt("gpt-parallel", "parallel-tools"),
            gpt("echo", "echo"),
            {"name": "claude", "provider": "anthropic", "base_url": an, "model_id": "tools"},
            {"name": "fake", "provider": "fake", "responses": ["Hello from the fake model."]},
        ]
        settings = load_settings(
            None,
            database=f"sqlite:///{tmp_path_factory.mktemp('protocol') / 'gw.db'}",
            models=models,
            embeddings=EMBEDDINGS[1:],
            server={"preload": True},
        )
        app = create_app(settings)
        with serve(app) as base:
            yield base, app


@pytest.fixture(scope="session")
def protocol(protocol_app: tuple[str, FastAPI]) -> str:
    return protocol_app[0]


def trace_of(app: FastAPI, call_id: str, timeout_s: float = 5.0) -> Trace:
    """The trace of call `call_id`, once the recorder has written it."""
    store: TraceStore = app.state.ctx.traces
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return store.get(call_id)
        except NotFoundError:
            assert time.monotonic() < deadline, f"no trace for {call_id}"
            time.sleep(0.05)
