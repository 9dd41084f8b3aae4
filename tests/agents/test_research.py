"""The research agent end to end against a live server: plan, search the knowledge base, draft,
critique, revise, and a report whose citations name real passages, with its Sources list and
an HTML artifact that escapes the model's raw HTML."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmforge.core.settings import Settings
from llmforge.gateway import create_app
from llmforge.kb import KnowledgeBases
from tests.agents.conftest import agent_settings, start
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.reply import Reply
from tests.fakes.server import serve


def _with_research(settings: Settings) -> Settings:
    researcher = settings.agents.definitions[0].model_copy(
        update={"name": "researcher", "graph": "research", "tools": ["kb_search"], "kb": "notes"}
    )
    agents = settings.agents.model_copy(update={"definitions": [researcher]})
    return settings.model_copy(update={"agents": agents})


async def _ingest(settings: Settings, folder: Path) -> None:
    kbs = KnowledgeBases(settings)
    try:
        kb = await kbs.open("notes", create=True)
        await kb.ingest([folder])
    finally:
        await kbs.aclose()


@pytest.fixture
def research(upstream: tuple[str, FakeOpenAI], tmp_path: Path) -> Iterator[tuple[str, FakeOpenAI]]:
    base, fake = upstream
    fake.reset()
    settings = _with_research(agent_settings(tmp_path, base))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pump.txt").write_text(
        "Pump manual\n\nReplace the impeller seals of the pump every 2000 hours.", "utf-8"
    )
    (docs / "garden.txt").write_text("Garden notes\n\nWater the orchids twice a week.", "utf-8")
    asyncio.run(_ingest(settings, docs))
    with serve(create_app(settings)) as url:
        yield url, fake


def _json_schema_name(request: dict[str, Any]) -> str | None:
    fmt = request.get("response_format") or {}
    return (fmt.get("json_schema") or {}).get("name")


def test_a_report_cites_the_passages_it_found_after_one_revision(
    research: tuple[str, FakeOpenAI],
) -> None:
    url, fake = research
    fake.respond(
        Reply(text='{"queries": ["pump impeller seals"]}'),
        Reply(text="# Seals\n\nReplace them every 2000 hours [1]. Orchids too [9]."),
        Reply(text='{"ok": false, "issues": ["orchids are off topic"]}'),
        Reply(text="# Seals\n\nReplace the impeller seals every 2000 hours [1] <b>now</b>."),
    )
    evs = start(url, "researcher", "How often are the pump seals replaced?")
    done = evs[-1]
    assert done["type"] == "done" and done["status"] == "done", done
    assert [e["node"] for e in evs if e["type"] == "step"] == [
        "plan",
        "search",
        "read",
        "draft",
        "critique",
        "revise",
        "report",
    ]
    # the plan's query and the question itself, each a kb_search tool call
    searched = [e["arguments"] for e in evs if e["type"] == "tool_call"]
    assert [a["query"] for a in searched] == [
        "pump impeller seals",
        "How often are the pump seals replaced?",
    ]
    assert all(a["kb"] == "notes" for a in searched)
    assert [_json_schema_name(r) for r in fake.requests] == ["plan", None, "critique", None]
    assert "orchids are off topic" in fake.requests[3]["messages"][0]["content"]

    report = done["output"]
    assert report.startswith("# Seals") and "every 2000 hours [1]" in report
    cited = [s for s in done["sources"] if s.get("cited")]
    assert [s["number"] for s in cited] == [1]
    assert Path(cited[0]["source"]).name == "pump.txt"
    assert "Sources" in report and "pump.txt" in report
    run = httpx.get(f"{url}/v1/agents/researcher/runs/{done['run_id']}", timeout=10).json()
    html = run["artifacts"]["html"]
    assert "<h1>Seals</h1>" in html and "&lt;b&gt;now&lt;/b&gt;" in html
    assert run["artifacts"]["markdown"] == report
