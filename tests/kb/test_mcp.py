"""The MCP server through the official SDK's own client: over stdio (`llmforge kb mcp` as a real
subprocess) and over streamable HTTP (`/mcp` on a real uvicorn running the gateway)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from llmforge.core.settings import load_settings
from llmforge.gateway import create_app
from llmforge.kb import KnowledgeBases
from tests.fakes.server import serve
from tests.kb.conftest import HASH_EMBEDDING, make_settings, write_html, write_markdown

MASTER = "mcp-master-key"
TOOLS = {"search", "fetch", "list_knowledge_bases"}


@pytest.fixture
async def config(tmp_path: Path) -> Path:
    """A config file and a knowledge base 'manuals' ingested from a markdown and an HTML file."""
    docs = tmp_path / "docs"
    docs.mkdir()
    write_markdown(docs / "pump.md")
    write_html(docs / "garden.html")
    kbs = KnowledgeBases(make_settings(tmp_path))
    try:
        await (await kbs.create("manuals")).ingest([docs])
    finally:
        await kbs.aclose()
    path = tmp_path / "llmforge.yaml"
    body = {
        "database": f"sqlite:///{tmp_path / 'kb-test.db'}",
        "embeddings": [HASH_EMBEDDING],
        "kb": {"path": str(tmp_path / "kbs")},
    }
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


async def check_tools(client: Client) -> None:
    """What an MCP client relies on: the tools, search hits with ids, fetch, clear errors."""
    assert {t.name for t in (await client.list_tools()).tools} == TOOLS

    listed = await client.call_tool("list_knowledge_bases", {})
    assert not listed.is_error
    assert structured(listed)["knowledge_bases"][0]["name"] == "manuals"

    found = await client.call_tool("search", {"query": "impeller seals", "k": 2})
    assert not found.is_error, found.content
    result = structured(found)
    assert result["kb"] == "manuals" and result["reranked"] is False
    hits = result["results"]
    assert len(hits) == 2
    assert hits[0]["title"] == "Pump Manual" and "impeller seals" in hits[0]["text"]
    assert hits[0]["source"].endswith("pump.md") and hits[0]["id"].startswith("manuals:")

    fetched = await client.call_tool("fetch", {"id": hits[0]["id"]})
    assert not fetched.is_error, fetched.content
    chunk = structured(fetched)
    assert chunk["text"] == hits[0]["text"] and chunk["chunk_id"] == hits[0]["chunk_id"]
    assert chunk["file_type"] == "md" and chunk["heading_path"]

    empty = await client.call_tool("search", {"query": "   "})
    assert empty.is_error and "query is empty" in text_of(empty)
    unknown = await client.call_tool("search", {"query": "pump", "kb": "nope"})
    assert unknown.is_error and "Unknown knowledge base 'nope'" in text_of(unknown)
    missing = await client.call_tool("fetch", {"id": "manuals:0000"})
    assert missing.is_error and "No chunk '0000'" in text_of(missing)
    too_many = await client.call_tool("search", {"query": "pump", "k": 10_000})
    assert too_many.is_error


def structured(result: Any) -> dict[str, Any]:
    content: dict[str, Any] = result.structured_content
    return content


def text_of(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_stdio_server_searches_and_fetches(config: Path, tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "llmforge"
    params = StdioServerParameters(
        command=str(command),
        args=["kb", "mcp", "--config", str(config)],
        cwd=str(tmp_path),
        env={"HF_HUB_OFFLINE": "1"},
    )
    async with Client(params, read_timeout_seconds=60) as client:
        await check_tools(client)


async def test_streamable_http_on_the_gateway(config: Path) -> None:
    settings = load_settings(config, master_key=MASTER)
    with serve(create_app(settings)) as base:
        r = httpx.post(base + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 401 and "Missing API key" in r.json()["error"]["message"]

        master = {"Authorization": f"Bearer {MASTER}"}
        created = httpx.post(base + "/admin/keys", json={"name": "assistant"}, headers=master)
        reader = {"Authorization": f"Bearer {created.json()['key']}"}  # any valid key may read

        http = httpx2.AsyncClient(headers=reader, timeout=60)
        async with http, Client(streamable_http_client(base + "/mcp", http_client=http)) as client:
            await check_tools(client)

            httpx.post(base + "/v1/kb", json={"name": "other"}, headers=master).raise_for_status()
            ambiguous = await client.call_tool("search", {"query": "pump"})
            assert ambiguous.is_error and "manuals, other" in text_of(ambiguous)
            chosen = await client.call_tool("search", {"query": "pump", "kb": "manuals"})
            assert not chosen.is_error and structured(chosen)["results"]


def test_a_bad_config_is_one_line_on_stderr(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "llmforge"), "kb", "mcp", "--config", "missing.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert out.stdout == ""  # nothing on the protocol's channel
