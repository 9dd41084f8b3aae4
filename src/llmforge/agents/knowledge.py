"""Tool `kb_search`: search a knowledge base and get passages numbered for citation.

Passages are numbered for the whole run (`ToolContext.cite`): the same passage found twice keeps
its number, so an answer built from several searches cites `[1]`..`[n]` without clashes, and the
run's `sources` list what each number is. The knowledge base is the one named in the call, else
the agent's `kb`, else the only one there is. It does not ingest, and hands the model the passage
text only (the full chunk metadata stays in `sources`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import Field

from llmforge.agents.tools import FunctionTool, ToolContext, ToolEnv, ToolResult
from llmforge.core.errors import ConfigError, LLMForgeError, NotFoundError
from llmforge.core.types import Source
from llmforge.kb import Hit, KnowledgeBase, KnowledgeBases

MAX_K = 20
PASSAGE_CHARS = 1200


async def open_kb(kbs: KnowledgeBases, name: str | None) -> KnowledgeBase:
    """The knowledge base named, else the only one."""
    if name:
        return await kbs.open(name)
    names = [i.name for i in await kbs.list()]
    if len(names) == 1:
        return await kbs.open(names[0])
    if not names:
        raise NotFoundError("There are no knowledge bases; ingest one with `llmforge kb ingest`.")
    raise NotFoundError(f"Several knowledge bases ({', '.join(names)}): pass `kb` to choose one.")


def source_of(kb: str, hit: Hit) -> Source:
    return Source(
        number=1,
        id=hit.chunk_id,
        kb=kb,
        source=hit.source,
        title=hit.title or None,
        heading=" > ".join(hit.heading_path) or None,
        page=hit.page,
        text=hit.text[:PASSAGE_CHARS],
        score=hit.score,
    )


def passages(sources: list[Source]) -> str:
    return "\n\n".join(
        f"[{s.number}] {s.title or s.source}"
        + (f" — {s.heading}" if s.heading else "")
        + f"\n{s.text}"
        for s in sources
    )


async def search(
    kbs: KnowledgeBases, query: str, kb: str | None, k: int, context: ToolContext
) -> ToolResult:
    try:
        base = await open_kb(kbs, kb or context.kb)
        hits = await base.search(query, k)
    except LLMForgeError as e:
        return ToolResult.error(e.message)
    if not hits:
        return ToolResult(text=f"No passages in '{base.name}' match {query!r}.")
    found = [context.cite(source_of(base.name, h)) for h in hits]
    text = (
        f"Passages from knowledge base '{base.name}'. Cite them by number, like [1].\n\n"
        + passages(found)
    )
    return ToolResult(text=text, sources=tuple(found))


def create(env: ToolEnv) -> FunctionTool:
    if env.knowledge_bases is None:
        raise ConfigError("Tool kb_search needs the knowledge bases of the server.")
    bases: Callable[[], KnowledgeBases] = env.knowledge_bases

    async def kb_search(
        query: Annotated[str, Field(description="a question or keywords")],
        context: ToolContext,
        kb: Annotated[str | None, Field(description="knowledge base; default: the agent's")] = None,
        k: Annotated[int, Field(ge=1, le=MAX_K, description="passages to return")] = 5,
    ) -> ToolResult:
        """Search the knowledge base for passages about a question. Cite passages you use by
        their number in square brackets, like [1]."""
        return await search(bases(), query, kb, k, context)

    return FunctionTool(kb_search)
