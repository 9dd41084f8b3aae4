"""Which of an agent's tools need a person's approval, as the agents API (GET /v1/agents, a
live server) and `llmforge agent list` report it: a tool's own `approval: required`, the
agent's `approval` list (`*`: all), an MCP server's policy, and `never` waiving the last two."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llmforge.gateway import create_app
from tests.agents.conftest import HERE, agent_settings
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.reply import Call, Reply
from tests.fakes.server import serve

DEFINITIONS: list[dict[str, Any]] = [
    {
        "name": "own",
        "model": "gpt",
        "tools": ["calculator", {"name": "python", "approval": "required"}],
    },
    {"name": "listed", "model": "gpt", "tools": ["calculator", "python"], "approval": ["python"]},
    {
        "name": "waived",
        "model": "gpt",
        "tools": [{"name": "mcp:strict", "approval": "never"}, "python"],
        "approval": ["python"],
    },
    {"name": "strict", "model": "gpt", "tools": ["mcp:strict", "calculator"]},
    {"name": "all", "model": "gpt", "tools": ["calculator", "python"], "approval": ["*"]},
    {"name": "free", "model": "gpt", "tools": ["calculator"]},
]
EXPECTED = {
    "own": ["python"],
    "listed": ["python"],
    "waived": ["python"],
    "strict": ["mcp:strict"],
    "all": ["calculator", "python"],
    "free": [],
}
STRICT = {"name": "strict", "command": sys.executable, "args": [str(HERE / "tiny_mcp.py")]}


@pytest.fixture(scope="module")
def server(
    upstream: tuple[str, FakeOpenAI], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, FakeOpenAI]]:
    base, fake = upstream
    tmp = tmp_path_factory.mktemp("listing")
    settings = agent_settings(
        tmp, base, definitions=DEFINITIONS, mcp_servers=[{**STRICT, "approval": "required"}]
    )
    with serve(create_app(settings)) as url:
        yield url, fake


def test_agents_api_names_the_tools_that_need_approval(server: tuple[str, FakeOpenAI]) -> None:
    url, _ = server
    listed = {a["name"]: a for a in httpx.get(f"{url}/v1/agents").json()["data"]}
    assert {name: listed[name]["needs_approval"] for name in EXPECTED} == EXPECTED
    assert listed["own"]["approval"] == []  # the agent's own list is still reported as written
    one = httpx.get(f"{url}/v1/agents/own").json()
    assert one["needs_approval"] == ["python"] and one["tools"] == ["calculator", "python"]


def test_a_tool_listed_as_needing_approval_pauses_the_run(
    server: tuple[str, FakeOpenAI],
) -> None:
    url, fake = server
    fake.reset()
    fake.respond(Reply(calls=(Call("python", '{"code": "print(1)"}'),)))
    r = httpx.post(f"{url}/v1/agents/own/runs", json={"input": "run it", "stream": False})
    run = r.json()
    assert run["status"] == "waiting_approval", run
    assert [p["name"] for p in run["pending"]] == ["python"]
    httpx.post(f"{url}/v1/agents/own/runs/{run['id']}/reject", json={})


def test_cli_agent_list_shows_the_tools_that_need_approval(tmp_path: Path) -> None:
    config = tmp_path / "llmforge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": f"sqlite:///{tmp_path / 'cli.db'}",
                "models": [
                    {"name": "gpt", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
                ],
                "agents": {
                    "definitions": DEFINITIONS,
                    "mcp_servers": [{**STRICT, "approval": "required"}],
                },
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "llmforge", "agent", "list", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r["approval"] for r in json.loads(done.stdout)}
    assert {name: rows[name] for name in EXPECTED} == {
        name: ", ".join(tools) for name, tools in EXPECTED.items()
    }
