"""The MCP server: knowledge-base search and fetch for MCP clients (Claude Desktop, IDEs, agents).

Tools (the official `mcp` SDK's `MCPServer`):

- `list_knowledge_bases()`: names and sizes;
- `search(query, kb=None, k=None)`: the best chunks, each with an `id` for `fetch`, its source
  file, title, headings and text; `kb` may be left out when there is one knowledge base;
- `fetch(id)`: one chunk's full text and metadata (`id` as `search` gave it: `kb:chunk_id`).

Two transports: stdio (`llmforge kb mcp`: `serve_stdio`, one process per client, reading the
knowledge bases directly) and streamable HTTP at `/mcp` on the gateway (mounted by the gateway's
knowledge-base routes: stateless, the same API keys as the rest of the API when a master key is
set, the gateway's shared `KnowledgeBases`). Tool
failures (unknown knowledge base, empty query) come back as tool errors whose text says how to fix
them. This module does not ingest: MCP clients only read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from llmforge import __version__
from llmforge.core.errors import InvalidRequestError, LLMForgeError, NotFoundError
from llmforge.core.settings import Settings
from llmforge.kb.knowledge_base import KnowledgeBase, KnowledgeBases

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

MCP_PATH = "/mcp"  # where the gateway serves it
MAX_K = 100  # an MCP client hands the hits to a model: more would flood its context
INSTRUCTIONS = (
    "Search the user's knowledge bases (their notes, manuals and documents). Call `search` with a "
    "question or keywords; each hit has an `id` to pass to `fetch` for the full chunk. Call "
    "`list_knowledge_bases` to see which exist when there are several."
)


class SearchHit(BaseModel):
    id: str = Field(description="pass to `fetch`: '<kb>:<chunk_id>'")
    kb: str
    chunk_id: str
    score: float = Field(description="orders the hits; not comparable across queries")
    title: str
    source: str = Field(description="the file the chunk comes from")
    heading_path: list[str] = Field(default_factory=list)
    page: int | None = None
    text: str


class SearchResults(BaseModel):
    kb: str
    query: str
    reranked: bool = Field(description="whether a cross-encoder reranked the hits")
    results: list[SearchHit]


class FetchedChunk(BaseModel):
    id: str
    kb: str
    chunk_id: str
    title: str
    source: str
    heading_path: list[str] = Field(default_factory=list)
    page: int | None = None
    chunk_index: int
    file_type: str
    text: str


class KnowledgeBaseSummary(BaseModel):
    name: str
    documents: int
    chunks: int
    embedding: str


class KnowledgeBaseList(BaseModel):
    knowledge_bases: list[KnowledgeBaseSummary]


def build_server(bases: Callable[[], KnowledgeBases]) -> MCPServer[Any]:
    """An MCP server over the knowledge bases `bases()` returns."""
    # the SDK is imported when a server is built, not by every `llmforge` command
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server: MCPServer[Any] = MCPServer(
        "llmforge", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )
    root.handlers[:] = handlers  # the SDK's constructor calls logging.basicConfig: undo it
    root.setLevel(level)

    async def pick(name: str | None) -> KnowledgeBase:
        kbs = bases()
        if name:
            return await kbs.open(name)
        names = [i.name for i in await kbs.list()]
        if len(names) == 1:
            return await kbs.open(names[0])
        if not names:
            raise NotFoundError(
                "There are no knowledge bases yet; create one with `llmforge kb ingest PATH "
                "--kb NAME` or `POST /v1/kb`."
            )
        raise InvalidRequestError(
            f"There are several knowledge bases ({', '.join(names)}); pass `kb` to choose one.",
            param="kb",
        )

    @server.tool(
        description="Search a knowledge base for the passages that best answer `query` "
        "(hybrid semantic + keyword search). Returns up to `k` hits, best first."
    )
    async def search(
        query: Annotated[str, Field(description="a question or keywords")],
        kb: Annotated[
            str | None, Field(description="knowledge base name; optional when there is one")
        ] = None,
        k: Annotated[
            int | None, Field(ge=1, le=MAX_K, description="how many hits (default 5)")
        ] = None,
    ) -> SearchResults:
        try:
            base = await pick(kb)
            result = await base.search_detailed(query, k)
        except LLMForgeError as e:
            raise ToolError(e.message) from e
        hits = [
            SearchHit(
                id=f"{base.name}:{h.chunk_id}",
                kb=base.name,
                chunk_id=h.chunk_id,
                score=h.score,
                title=h.title,
                source=h.source,
                heading_path=h.heading_path,
                page=h.page,
                text=h.text,
            )
            for h in result.hits
        ]
        reranked = any(s.name == "rerank" for s in result.stages)
        return SearchResults(kb=base.name, query=result.query, reranked=reranked, results=hits)

    @server.tool(description="The full text and metadata of one search hit, by its `id`.")
    async def fetch(
        id: Annotated[str, Field(description="a hit's id from `search` ('<kb>:<chunk_id>')")],
    ) -> FetchedChunk:
        try:
            return await _fetch(bases(), id)
        except LLMForgeError as e:
            raise ToolError(e.message) from e

    @server.tool(description="The knowledge bases there are, with their sizes.")
    async def list_knowledge_bases() -> KnowledgeBaseList:
        try:
            infos = await bases().list()
        except LLMForgeError as e:
            raise ToolError(e.message) from e
        return KnowledgeBaseList(
            knowledge_bases=[
                KnowledgeBaseSummary(
                    name=i.name, documents=i.documents, chunks=i.chunks, embedding=i.embedding
                )
                for i in infos
            ]
        )

    return server


async def _fetch(kbs: KnowledgeBases, hit_id: str) -> FetchedChunk:
    name, sep, chunk_id = hit_id.strip().rpartition(":")
    if not chunk_id:
        raise InvalidRequestError("Pass the `id` of a search hit, e.g. 'manuals:3f2a...'.")
    names = [name] if sep else [i.name for i in await kbs.list()]
    for kb_name in names:
        kb = await kbs.open(kb_name)
        try:
            chunk = await kb.get_chunk(chunk_id)
        except NotFoundError:
            if sep:
                raise
            continue
        return FetchedChunk(
            id=f"{kb.name}:{chunk.id}",
            kb=kb.name,
            chunk_id=chunk.id,
            **chunk.model_dump(exclude={"id", "content_hash", "tokens"}),
        )
    raise NotFoundError(f"No chunk '{chunk_id}' in any knowledge base; pass an id from `search`.")


# -- stdio: `llmforge kb mcp` -------------------------------------------------------------------


async def serve_stdio(settings: Settings) -> None:
    kbs = KnowledgeBases(settings)
    try:
        await build_server(lambda: kbs).run_stdio_async()
    finally:
        await kbs.aclose()
