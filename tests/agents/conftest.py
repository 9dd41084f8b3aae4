"""A live gateway with agents over a scripted OpenAI-compatible upstream (tests/fakes), a tiny MCP
server over stdio, and helpers to read a run's SSE stream."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmforge.core.settings import Settings, load_settings
from llmforge.gateway import create_app
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import serve

HERE = Path(__file__).parent


def agent_settings(tmp: Path, upstream: str, **agents: Any) -> Settings:
    """Agents over model `gpt` (the fake upstream), memory on the fake embedder."""
    definitions = [
        {"name": "calc", "model": "gpt", "tools": ["calculator"]},
        {
            "name": "guarded",
            "model": "gpt",
            "tools": ["calculator", {"name": "python", "approval": "required"}],
        },
        {"name": "looper", "model": "gpt", "tools": ["calculator"], "limits": {"max_steps": 3}},
        {"name": "tiny", "model": "gpt", "tools": ["mcp:tiny"]},
        {"name": "mem", "model": "gpt", "tools": ["remember", "recall"]},
        {"name": "fetcher", "model": "gpt", "tools": ["http_fetch"]},
    ]
    config: dict[str, Any] = {
        "definitions": definitions,
        "mcp_servers": [
            {
                "name": "tiny",
                "command": sys.executable,
                "args": [str(HERE / "tiny_mcp.py")],
                "env": {"TINY_MCP_LOG": str(tmp / "mcp.log")},
            }
        ],
        "sandbox": {"scratch": str(tmp / "scratch"), "cpu_s": 2, "wall_s": 4},
        "fetch": {"allow": ["127.0.0.1"]},
        **agents,
    }
    return load_settings(
        None,
        database=f"sqlite:///{tmp / 'agents.db'}",
        models=[
            {
                "name": "gpt",
                "provider": "openai",
                "base_url": upstream + "/v1",
                "model_id": "echo",
                "price": {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0},
            },
            {"name": "helper", "provider": "agent", "model_id": "calc"},
        ],
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 16}],
        kb={"path": str(tmp / "kb")},
        agents=config,
        server={"preload": False},
    )


@dataclass
class Live:
    base: str
    fake: FakeOpenAI
    settings: Settings
    app: Any


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, FakeOpenAI]]:
    fake = FakeOpenAI()
    with serve(fake.app) as base:
        yield base, fake


@pytest.fixture(scope="module")
def live(
    upstream: tuple[str, FakeOpenAI], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    base, fake = upstream
    settings = agent_settings(tmp_path_factory.mktemp("agents"), base)
    app = create_app(settings)
    with serve(app) as url:
        yield Live(url, fake, settings, app)


@pytest.fixture
def gw(live: Live) -> Live:
    live.fake.reset()
    return live


def events(response: httpx.Response) -> list[dict[str, Any]]:
    """The SSE events of a response, each as its data with `type`."""
    out = []
    for block in response.text.split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            out.append(json.loads("".join(data)))
    return out


def start(base: str, agent: str, text: str, **body: Any) -> list[dict[str, Any]]:
    r = httpx.post(f"{base}/v1/agents/{agent}/runs", json={"input": text, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return events(r)
