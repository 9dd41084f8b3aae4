"""Provider `rag`: a knowledge base in front of a chat model, answering with numbered citations.

`{name: docs-assistant, provider: rag, kb: docs, model: local}` in `models:` makes a model any
OpenAI client can call. Each turn:

1. **Decide** whether to search (`rag.retrieval`): `auto` skips greetings, thanks and other
   small talk; `always` searches every turn; `model` asks the wrapped model for a JSON decision
   and its own queries, constrained to a JSON schema where the backend supports it (a reply that
   is not valid JSON falls back to `auto`).
2. **Queries**: the last user message and, in a conversation, that message with the previous
   user turn in front (a follow-up such as "and how long does it take?" keeps its subject), plus
   the model's own queries in `model` mode; at most `rag.max_searches`, each searched.
3. **Merge**: hits of all queries by chunk, reciprocal-rank combined; passages whose cosine
   similarity to the queries is below `rag.min_relevance` are dropped (with a reranker, its
   score decides instead). Nothing left: the answer says plainly that the knowledge base does
   not cover the question, without calling the model.
4. **Answer**: the passages, numbered, go to the model in a system message with instructions to
   cite them as `[n]`. Markers naming no passage are removed. An answer that cites nothing gets
   the markers of the passages its words overlap most, at its end. `sources` (on the final
   Delta and so on the completion) lists every passage given, with `cited`.

It does not rerank or filter on its own (the knowledge base's search does that), and does not
call tools: the search is part of the turn, invisible to the client except through `sources`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from llmforge.core.config import ModelConfig, RagOptions
from llmforge.core.errors import ConfigError, LLMForgeError
from llmforge.core.types import Completion, Delta, Message, ResponseFormat, Sampling, Source, Usage
from llmforge.kb.knowledge_base import KnowledgeBase, shared_knowledge_bases
from llmforge.kb.types import Hit
from llmforge.models.base import ChatModel, ModelContext, collect

INSTRUCTIONS = (
    "You answer questions using only the numbered passages from the knowledge base '{kb}' "
    "below. After each statement, cite the passage it comes from by its number in square "
    "brackets, like [1]. If the passages do not contain the answer, say that the knowledge base "
    "does not cover it; do not guess. Answer in the language of the question.\n\n{passages}"
)
NO_ANSWER = "The knowledge base '{kb}' has nothing on this question, so I cannot answer it from it."
NO_ANSWER_CJK = "知识库“{kb}”中没有与这个问题相关的内容，无法据此回答。"
DECIDE = (
    "Decide whether answering the user's last message needs a search of the knowledge base "
    "'{kb}'. Reply with JSON only: "
    '{{"search": true or false, "queries": ["standalone search query", ...]}}. '
    "Write each query so that it makes sense without the conversation."
)
DECISION_SCHEMA = {  # grammar-constrained on llama.cpp, `response_format` upstream
    "type": "object",
    "properties": {
        "search": {"type": "boolean"},
        "queries": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["search", "queries"],
}
SMALL_TALK = re.compile(
    r"(hi|hello|hey|thanks?( you)?( very much)?|thx|ok(ay)?|bye|good (morning|evening|night)|"
    r"你好|您好|谢谢|多谢|再见|好的)[\s!.,。！，~]*",
    re.IGNORECASE,
)
_CJK = re.compile(r"[\u3400-\u9fff]")
MARKER = re.compile(r"\[(\d{1,3})\]")
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\W_]{3,}", re.UNICODE)
_RRF_K = 60
_CHARS_PER_TOKEN = 4
_OVERLAP_FLOOR = 0.2  # share of an answer's words found in a passage before it counts as its source


@dataclass
class _Turn:
    """What one turn found: the passages (numbered from 1) and the tokens spent finding them."""

    sources: list[Source] = field(default_factory=list)
    searched: bool = False
    usage: Usage = field(default_factory=Usage)


class RagChatModel:
    def __init__(self, config: ModelConfig, context: ModelContext) -> None:
        if not config.kb or not config.model:
            raise ConfigError(
                f"Model '{config.name}' (provider rag) needs `kb:` (a knowledge base) and `model:` "
                "(the chat model that answers), e.g. {provider: rag, kb: docs, model: local}."
            )
        if config.model == config.name:
            raise ConfigError(f"Model '{config.name}' (provider rag) cannot answer through itself.")
        self.name = config.name
        self.kb_name = config.kb
        self.options: RagOptions = config.rag
        self._context = context
        try:
            self._model: ChatModel = context.chat(config.model)
        except LLMForgeError as e:  # at start-up: the catalog builds every model
            raise ConfigError(
                f"Model '{config.name}' (provider rag) answers through `model: {config.model}`: "
                f"{e.message}"
            ) from e

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        return await collect(self.stream(messages, sampling))

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        turn = await self._retrieve(messages)
        if turn.searched and not turn.sources:
            cjk = _CJK.search(messages[-1].content) if messages else None
            yield Delta(text=(NO_ANSWER_CJK if cjk else NO_ANSWER).format(kb=self.kb_name))
            yield Delta(finish_reason="stop", usage=turn.usage)
            return
        prompt = self._prompt(messages, turn.sources) if turn.sources else list(messages)
        markers = _MarkerFilter(len(turn.sources))
        parts: list[str] = []
        upstream = self._model.stream(prompt, sampling)
        try:
            async for delta in upstream:
                text = markers.feed(delta.text)
                if delta.finish_reason is None:
                    if text:
                        parts.append(text)
                        yield Delta(text=text)
                    continue
                text += markers.flush()
                answer = "".join(parts) + text
                cited = markers.cited or _attribute(answer, turn.sources)
                if cited and not markers.cited:
                    text += " " + "".join(f"[{n}]" for n in sorted(cited))
                usage = _add(turn.usage, delta.usage or Usage())
                sources = tuple(
                    s.model_copy(update={"cited": s.number in cited}) for s in turn.sources
                )
                if text:
                    yield Delta(text=text)
                yield Delta(finish_reason=delta.finish_reason, usage=usage, sources=sources)
                return
        finally:
            await upstream.aclose()

    async def aclose(self) -> None:
        return None  # the wrapped model and the knowledge bases belong to the catalog

    # -- retrieval ------------------------------------------------------------------------------

    async def _retrieve(self, messages: Sequence[Message]) -> _Turn:
        turn = _Turn()
        users = [m.content.strip() for m in messages if m.role == "user" and m.content.strip()]
        if not users:
            return turn
        mode = self.options.retrieval
        queries = _queries(users)
        if mode == "model":
            decided, model_queries, turn.usage = await self._decide(messages)
            if decided is False:
                return turn
            queries = [*model_queries, *queries] if decided else queries
        elif mode == "auto" and SMALL_TALK.fullmatch(users[-1]):
            return turn
        kb = await self._kb()
        k = self.options.k or kb.default_k
        ranked: dict[str, float] = {}
        hits: dict[str, Hit] = {}
        relevant: set[str] = set()
        for query in list(dict.fromkeys(queries))[: self.options.max_searches]:
            for rank, hit in enumerate(await kb.search(query, k), start=1):
                ranked[hit.chunk_id] = ranked.get(hit.chunk_id, 0.0) + 1 / (_RRF_K + rank)
                hits.setdefault(hit.chunk_id, hit)
                if self._relevant(hit):
                    relevant.add(hit.chunk_id)
        turn.searched = True
        if not relevant:
            return turn
        order = sorted(relevant, key=lambda i: -ranked[i])[:k]
        budget = self.options.max_context_tokens * _CHARS_PER_TOKEN
        for chunk_id in order:
            hit = hits[chunk_id]
            text = hit.text[: max(budget, 0)]
            if not text:
                break
            budget -= len(text)
            turn.sources.append(_source(len(turn.sources) + 1, self.kb_name, hit, text))
        return turn

    def _relevant(self, hit: Hit) -> bool:
        if hit.rerank_score is not None:
            return hit.rerank_score > 0  # cross-encoder logit: > 0 reads as relevant
        return hit.dense_score is not None and hit.dense_score >= self.options.min_relevance

    async def _decide(self, messages: Sequence[Message]) -> tuple[bool | None, list[str], Usage]:
        """The wrapped model's decision and queries; None when its reply is not usable JSON."""
        ask = [Message(role="system", content=DECIDE.format(kb=self.kb_name)), *messages[-6:]]
        sampling = Sampling(
            max_tokens=128,
            temperature=0.0,
            response_format=ResponseFormat.for_schema(DECISION_SCHEMA),
        )
        reply = await self._model.complete(ask, sampling)
        match = re.search(r"\{.*\}", reply.text, re.DOTALL)
        try:
            decision = json.loads(match.group(0)) if match else None
        except ValueError:
            decision = None
        if not isinstance(decision, dict) or not isinstance(decision.get("search"), bool):
            return None, [], reply.usage
        queries = [q.strip() for q in decision.get("queries") or [] if isinstance(q, str)]
        return decision["search"], [q for q in queries if q], reply.usage

    async def _kb(self) -> KnowledgeBase:
        return await shared_knowledge_bases(self._context).open(self.kb_name)

    def _prompt(self, messages: Sequence[Message], sources: Sequence[Source]) -> list[Message]:
        passages = "\n\n".join(
            f"[{s.number}] {s.title or s.source}"
            + (f" — {s.heading}" if s.heading else "")
            + (f" (page {s.page})" if s.page else "")
            + f"\n{s.text}"
            for s in sources
        )
        template = self.options.system_prompt or INSTRUCTIONS
        system = template.format(kb=self.kb_name, passages=passages)
        if "{passages}" not in template:
            system += "\n\n" + passages
        return [Message(role="system", content=system), *messages]


def _queries(users: list[str]) -> list[str]:
    last = users[-1]
    if len(users) == 1:
        return [last]
    return [last, f"{users[-2]} {last}"]


def _source(number: int, kb: str, hit: Hit, text: str) -> Source:
    return Source(
        number=number,
        id=hit.chunk_id,
        kb=kb,
        source=hit.source,
        title=hit.title or None,
        heading=" > ".join(hit.heading_path) or None,
        page=hit.page,
        text=text,
        score=hit.rerank_score if hit.rerank_score is not None else hit.dense_score,
    )


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
    )


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _attribute(answer: str, sources: Sequence[Source]) -> set[int]:
    """The passages an uncited answer draws on: those holding the largest share of its words
    (at least `_OVERLAP_FLOOR`, and within 80% of the best passage's share)."""
    words = _words(answer)
    if not words or not sources:
        return set()
    shares = {s.number: len(words & _words(s.text)) / len(words) for s in sources}
    best = max(shares.values())
    if best < _OVERLAP_FLOOR:
        return set()
    return {n for n, share in shares.items() if share >= 0.8 * best}


class _MarkerFilter:
    """Streams text through, removing `[n]` markers that name no passage and noting the valid
    ones. A `[` that may still open a marker is held back until it is decided. With no passages
    (small talk) nothing is a citation, so the text passes untouched."""

    def __init__(self, passages: int) -> None:
        self.passages = passages
        self.cited: set[int] = set()
        self._held = ""

    def feed(self, text: str) -> str:
        if not self.passages:
            return text
        text = self._held + text
        self._held = ""
        start = text.rfind("[")
        if start != -1 and re.fullmatch(r"\[\d{0,3}", text[start:]):
            text, self._held = text[:start], text[start:]
        return MARKER.sub(self._keep, text)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _keep(self, match: re.Match[str]) -> str:
        number = int(match.group(1))
        if 1 <= number <= self.passages:
            self.cited.add(number)
            return match.group(0)
        return ""


def create(config: ModelConfig, context: ModelContext | None = None) -> RagChatModel:
    if context is None:
        raise ConfigError(f"Model '{config.name}' (provider rag) must be built by a catalog.")
    return RagChatModel(config, context)
