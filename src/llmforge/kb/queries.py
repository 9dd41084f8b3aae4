"""Synthetic queries for a knowledge base's own chunks: the training and test data of `kb tune`.

Two generators, chosen by name (`generator_for`):

- `pseudo` (no model): for each chunk, its document's title with its headings (the query an
  entity or manual-section search looks like; not when that title names several documents of
  the sample, such as the paragraphs of one article) and a span of 3-8 content words cut from
  one of its sentences (the inverse cloze task: for training, that sentence is taken out of the
  positive text nine times out of ten, so the embedder must learn the context around a phrase
  rather than copying its words). Instant and deterministic for a seed.
- `model`: a chat model (a configured teacher, or the local model) writes one search query per
  chunk, at temperature 0; answers that are empty, too long or a copy of the passage's opening
  fall back to the pseudo queries of that chunk.

A query's positive is the chunk it was written from, as the text it must be matched by: without
the sentence a span query was cut from (mostly) and without the title for a title query. The
tuner trains on that text and judges held-out queries as that cloze too (`tune.py`); relevance is
judged by the chunk's source document.
This module embeds nothing and searches nothing.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from pydantic import BaseModel

from llmforge.core.errors import InvalidRequestError, LLMForgeError
from llmforge.core.types import Message, Sampling
from llmforge.kb.bm25 import _stopwords
from llmforge.kb.chunking import sentences
from llmforge.kb.types import Chunk
from llmforge.models.base import ChatModel

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")
MIN_SPAN, MAX_SPAN = 3, 8
KEEP_SENTENCE = 0.1  # inverse cloze task: how often the query's sentence stays in the positive
PROMPT = (
    "Write one short search query (at most 12 words) that a user would type to find the "
    "passage below. Answer with the query only.\n\nPassage:\n{passage}"
)
MAX_PASSAGE_CHARS = 1200


class SyntheticQuery(BaseModel):
    """A query written for one chunk. `positive` is the text the embedder is trained to match;
    `cloze` is what the chunk counts as when a held-out query is judged: never the words the
    query was cut from."""

    text: str
    chunk_id: str
    source: str
    kind: str
    positive: str
    cloze: str = ""


class QueryGenerator(Protocol):
    name: str

    async def generate(self, chunks: Sequence[Chunk], rng: random.Random) -> list[SyntheticQuery]:
        """Queries for `chunks` (some chunks may get none, some several)."""
        ...


def _content_words(text: str) -> list[str]:
    stop = _stopwords()
    return [w for w in _WORD.findall(text) if w.lower() not in stop]


def _title_query(chunk: Chunk) -> str | None:
    parts = [chunk.title, *[h for h in chunk.heading_path if h != chunk.title]]
    text = " ".join(p for p in parts if p).strip()
    words = _content_words(text)
    if not words or (len(words) == 1 and any(c.isdigit() for c in words[0])):
        return None  # a file name such as doc000123 says nothing
    return " ".join(text.split()[:16])


def shared_titles(chunks: Sequence[Chunk]) -> set[str]:
    """Title queries naming more than one document of the sample: they identify none (the
    paragraphs of one article, files sharing a heading), so they are not asked."""
    sources: dict[str, set[str]] = {}
    for chunk in chunks:
        title = _title_query(chunk)
        if title:
            sources.setdefault(title, set()).add(chunk.source)
    return {t for t, found in sources.items() if len(found) > 1}


def _sentence_query(chunk: Chunk, rng: random.Random) -> tuple[str, str, str] | None:
    """(a span of one sentence's content words, the text to train it on, the chunk's text
    without that sentence)."""
    parts = sentences(chunk.text)
    usable = [i for i, s in enumerate(parts) if len(_content_words(s)) >= MIN_SPAN]
    if len(parts) > 1 and parts[0].strip() == chunk.title.strip():
        usable = [i for i in usable if i != 0]  # a text file's title line
    if not usable:
        return None
    index = rng.choice(usable)
    words = _content_words(parts[index])
    length = rng.randint(MIN_SPAN, min(MAX_SPAN, len(words)))
    start = rng.randint(0, len(words) - length)
    query = " ".join(words[start : start + length])
    rest = "".join(p for i, p in enumerate(parts) if i != index).strip()
    keep = rng.random() < KEEP_SENTENCE or len(rest) < 40
    cloze = _with_header(chunk, rest)
    return query, chunk.indexed_text() if keep else cloze, cloze


def _without_title(chunk: Chunk) -> str:
    """The chunk's text without its title (and a text file's title line): what a title query
    must be matched by (an entity's description, a section's content)."""
    text = chunk.text.strip()
    first, _, rest = text.partition("\n")
    if first.strip() == chunk.title.strip() and rest.strip():
        text = rest.strip()
    return text


def _with_header(chunk: Chunk, text: str) -> str:
    return chunk.model_copy(update={"text": text}).indexed_text()


class PseudoQueries:
    """Title and sentence-span queries; no model."""

    name = "pseudo"

    async def generate(self, chunks: Sequence[Chunk], rng: random.Random) -> list[SyntheticQuery]:
        out: list[SyntheticQuery] = []
        titled = shared_titles(chunks)
        for chunk in chunks:
            out.extend(self.for_chunk(chunk, rng, titled))
        return out

    def for_chunk(self, chunk: Chunk, rng: random.Random, titled: set[str]) -> list[SyntheticQuery]:
        """`titled`: sources that had their title query, and titles too common to ask for."""
        out: list[SyntheticQuery] = []
        title = _title_query(chunk)
        if title and chunk.source not in titled and title not in titled:
            titled.add(chunk.source)  # one title query per document
            out.append(_query(title, chunk, "title", _without_title(chunk)))
        span = _sentence_query(chunk, rng)
        if span is not None:
            out.append(_query(span[0], chunk, "sentence", span[1], span[2]))
        return out


class ModelQueries:
    """One query per chunk written by a chat model; the pseudo queries where it gives none."""

    name = "model"

    def __init__(
        self,
        model: ChatModel,
        *,
        label: str = "model",
        concurrency: int = 1,
        on_query: Callable[[int], None] | None = None,
    ) -> None:
        self._model = model
        self.name = f"model:{label}"
        self._concurrency = max(1, concurrency)
        self._on_query = on_query
        self.failures = 0

    async def generate(self, chunks: Sequence[Chunk], rng: random.Random) -> list[SyntheticQuery]:
        fallback = PseudoQueries()
        titled = shared_titles(chunks)
        gate = asyncio.Semaphore(self._concurrency)
        done = 0

        async def one(chunk: Chunk) -> str | None:
            nonlocal done
            async with gate:
                text = await self._write(chunk)
            done += 1
            if self._on_query:
                self._on_query(done)
            return text

        written = await asyncio.gather(*(one(c) for c in chunks))
        out: list[SyntheticQuery] = []
        for chunk, text in zip(chunks, written, strict=True):
            if text is None:
                self.failures += 1
                out.extend(fallback.for_chunk(chunk, rng, titled))
            else:
                out.append(_query(text, chunk, "model", chunk.indexed_text()))
        return out

    async def _write(self, chunk: Chunk) -> str | None:
        passage = chunk.indexed_text()[:MAX_PASSAGE_CHARS]
        messages = [Message(role="user", content=PROMPT.format(passage=passage))]
        try:
            answer = await self._model.complete(
                messages, Sampling(max_tokens=32, temperature=0.0, seed=0)
            )
        except LLMForgeError:
            return None
        return clean_query(answer.text, chunk)


def clean_query(raw: str, chunk: Chunk) -> str | None:
    """The model's query, or None when it is unusable (empty, long, the passage's opening)."""
    line = next((ln for ln in raw.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(search )?query\s*:\s*", "", line.strip(), flags=re.IGNORECASE)
    line = line.strip().strip("\"'`*").strip()
    words = line.split()
    if not 1 <= len(words) <= 20:
        return None
    if chunk.text.strip().lower().startswith(line.lower()) and len(words) > 6:
        return None
    return line


def _query(
    text: str, chunk: Chunk, kind: str, positive: str, cloze: str | None = None
) -> SyntheticQuery:
    return SyntheticQuery(
        text=text,
        chunk_id=chunk.id,
        source=chunk.source,
        kind=kind,
        positive=positive,
        cloze=cloze if cloze is not None else positive,
    )


def generator_for(kind: str, model: ChatModel | None, label: str | None) -> QueryGenerator:
    """The generator `kind` names (`pseudo` or `model`); `model` needs the chat model."""
    if kind == "pseudo":
        return PseudoQueries()
    if model is None:
        raise InvalidRequestError(
            "queries=model needs a chat model to write them: pass `model` (a name under "
            "`models:`, e.g. a teacher model or `local`), or use queries=pseudo.",
            param="model",
        )
    return ModelQueries(model, label=label or "model", concurrency=4)
