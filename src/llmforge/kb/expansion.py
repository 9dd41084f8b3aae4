"""Query expansion before retrieval: HyDE and multi-query, each written by a chat model.

- `hyde` (Gao et al., 2022): the model writes a short passage that would answer the query; the
  passage is searched next to the query itself (dense and BM25), so a good guess pulls in
  documents phrased like answers and a bad one cannot push out what the query alone finds.
- `multi-query` (LangChain's MultiQueryRetriever, RAGFlow): the model rewrites the query as up to
  three differently worded queries; each is searched with the original.

The retriever merges the lists of every text by keeping each chunk's best score per retriever,
then fuses as usual. Both cost one model call per search (greedy, short), so they are options,
not defaults: `bench/retrieval.py --expand` measures them against the plain search on the same
judged queries. A model failure falls back to the plain query. This module does not search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from llmforge.core.errors import InvalidRequestError, LLMForgeError
from llmforge.core.types import Message, Sampling
from llmforge.models.base import ChatModel

HYDE_PROMPT = (
    "Write a short encyclopedia-style passage (two or three sentences) that answers the "
    "question or describes the topic below. Write only the passage.\n\n{query}"
)
MULTI_PROMPT = (
    "Rewrite the search query below in three different ways, using other words, one per line. "
    "Write only the three queries.\n\nQuery: {query}"
)


class QueryExpander(Protocol):
    name: str

    async def expand(self, query: str) -> list[str]:
        """The texts to search for `query`, the query itself first."""
        ...


class Hyde:
    name = "hyde"

    def __init__(self, model: ChatModel, max_tokens: int = 96) -> None:
        self._model = model
        self._max_tokens = max_tokens

    async def expand(self, query: str) -> list[str]:
        text = await _ask(self._model, HYDE_PROMPT.format(query=query), self._max_tokens)
        return [query, text.strip()] if text and text.strip() else [query]


class MultiQuery:
    name = "multi-query"

    def __init__(self, model: ChatModel, max_tokens: int = 64) -> None:
        self._model = model
        self._max_tokens = max_tokens

    async def expand(self, query: str) -> list[str]:
        text = await _ask(self._model, MULTI_PROMPT.format(query=query), self._max_tokens)
        rewrites = []
        for line in (text or "").splitlines():
            line = line.strip().lstrip("-*0123456789.) ").strip().strip("\"'")
            if line and line.lower() != query.lower() and len(line.split()) <= 30:
                rewrites.append(line)
        return [query, *rewrites[:3]]


async def _ask(model: ChatModel, prompt: str, max_tokens: int) -> str | None:
    try:
        answer = await model.complete(
            [Message(role="user", content=prompt)],
            Sampling(max_tokens=max_tokens, temperature=0.0, seed=0),
        )
    except LLMForgeError:
        return None
    return answer.text


EXPANDERS: dict[str, Callable[[ChatModel], QueryExpander]] = {
    "hyde": Hyde,
    "multi-query": MultiQuery,
}


def expander_for(name: str, model: ChatModel) -> QueryExpander:
    """The expander `name` (hyde, multi-query) writing with `model`."""
    try:
        factory = EXPANDERS[name]
    except KeyError:
        raise InvalidRequestError(
            f"Unknown query expansion '{name}'. Known: {', '.join(EXPANDERS)}.", param="expand"
        ) from None
    return factory(model)
