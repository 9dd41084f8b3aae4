"""What an OpenAI-compatible server answers, as small pydantic models, and how each becomes core
types: chat completions and their stream chunks, legacy text completions and theirs, embeddings.

The models read only the fields LLMForge uses and ignore the rest (`extra="ignore"`), and they are
lenient where vendors differ: `content: null`, a missing `usage` or `index`, tool-call arguments
sent as an object instead of JSON text, a tool call without an id (one is made up), finish reasons
OpenAI does not define (`function_call` reads as `tool_calls`; an unknown one as `tool_calls` when
the choice called tools, else `stop`). A shape they cannot read raises pydantic's
`ValidationError`, which the client (`openai_compat.py`) turns into an `UpstreamError` naming the
model.

`ChunkReader` turns a stream of chunks into the core's `Delta`s: the first piece of each tool call
carries its id and name and later pieces only arguments (whatever the vendor repeats), each choice
ends with its own finish Delta, and usage rides on the very last one.

This module does no I/O and builds no request; the requests are built by `openai_compat.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmforge.core.types import (
    Choice,
    Completion,
    Delta,
    FinishReason,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

FINISH: Mapping[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # the deprecated functions API
    "content_filter": "content_filter",
}


def finish(reason: str | None, called: bool) -> FinishReason:
    """The core finish reason for a vendor's `reason` (`called`: the choice called tools)."""
    known = FINISH.get(reason or "")
    if known is not None:
        return known
    return "tool_calls" if called else "stop"


def new_call_id() -> str:
    """An id for a tool call whose vendor sent none (clients need one to answer the call)."""
    return "call_" + uuid.uuid4().hex[:24]


class Answer(BaseModel):
    """Base of every answer model: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")


class WireUsage(Answer):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def to_core(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens or 0, completion_tokens=self.completion_tokens or 0
        )


def usage_of(usage: WireUsage | None) -> Usage:
    return usage.to_core() if usage is not None else Usage()


# -- log probabilities ----------------------------------------------------------------------------


class WireTopLogprob(Answer):
    token: str
    logprob: float
    bytes: list[int] | None = None


class WireTokenLogprob(WireTopLogprob):
    top_logprobs: list[WireTopLogprob] | None = None

    def to_core(self) -> TokenLogprob:
        return TokenLogprob(
            token=self.token,
            logprob=self.logprob,
            bytes=self.bytes,
            top_logprobs=[
                TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes)
                for t in self.top_logprobs or ()
            ],
        )


class WireLogprobs(Answer):
    """A chat choice's `logprobs`: one entry per generated token of the content."""

    content: list[WireTokenLogprob] | None = None

    def to_core(self) -> list[TokenLogprob]:
        return [t.to_core() for t in self.content or ()]


class LegacyLogprobs(Answer):
    """A text completion's `logprobs`: parallel lists, alternatives as {token: logprob} maps."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None

    def to_core(self) -> list[TokenLogprob]:
        tops = self.top_logprobs or []
        out = []
        for k, (token, logprob) in enumerate(zip(self.tokens, self.token_logprobs, strict=False)):
            alternatives = (tops[k] if k < len(tops) else None) or {}
            out.append(
                TokenLogprob(
                    token=token,
                    logprob=logprob if logprob is not None else 0.0,
                    top_logprobs=[TopLogprob(token=t, logprob=v) for t, v in alternatives.items()],
                )
            )
        return out


# -- chat completions -----------------------------------------------------------------------------


def _json_text(value: Any) -> Any:
    """Arguments as JSON text: an object some vendors send is serialised; None is no text."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class WireFunction(Answer):
    name: str
    arguments: str | None = None

    _text = field_validator("arguments", mode="before")(_json_text)


class WireToolCall(Answer):
    id: str | None = None
    function: WireFunction

    def to_core(self) -> ToolCall:
        return ToolCall(
            id=self.id or new_call_id(),
            name=self.function.name,
            arguments=self.function.arguments or "{}",
        )


class WireMessage(Answer):
    content: str | None = None
    tool_calls: list[WireToolCall] | None = None


class WireChoice(Answer):
    index: int = 0
    message: WireMessage
    finish_reason: str | None = None
    logprobs: WireLogprobs | None = None


class ChatAnswer(Answer):
    """A whole chat completion (`POST /chat/completions` without `stream`)."""

    choices: list[WireChoice] = Field(min_length=1)
    usage: WireUsage | None = None

    def to_core(self, logprobs: bool) -> Completion:
        """The Completion it says (`logprobs`: they were asked for, so [] when none came)."""
        said = []
        for c in sorted(self.choices, key=lambda c: c.index):
            calls = tuple(t.to_core() for t in c.message.tool_calls or ())
            lps = c.logprobs.to_core() if c.logprobs is not None else None
            reason = finish(c.finish_reason, bool(calls))
            said.append(_Said(c.message.content or "", reason, calls, _asked(lps, logprobs)))
        return _completion(said, self.usage)


class _Said(NamedTuple):
    """One choice's answer, before it is placed (first choice or an extra one)."""

    text: str
    finish_reason: FinishReason
    tool_calls: tuple[ToolCall, ...]
    logprobs: list[TokenLogprob] | None


def _asked(lps: list[TokenLogprob] | None, logprobs: bool) -> list[TokenLogprob] | None:
    return [] if lps is None and logprobs else lps


def _completion(said: list[_Said], usage: WireUsage | None) -> Completion:
    first = said[0]
    return Completion(
        text=first.text,
        finish_reason=first.finish_reason,
        usage=usage_of(usage),
        tool_calls=first.tool_calls,
        logprobs=first.logprobs,
        extra_choices=tuple(
            Choice(
                index=i,
                text=s.text,
                finish_reason=s.finish_reason,
                tool_calls=s.tool_calls,
                logprobs=s.logprobs,
            )
            for i, s in enumerate(said)
            if i > 0
        ),
    )


class PieceFunction(Answer):
    name: str | None = None
    arguments: str | None = None

    _text = field_validator("arguments", mode="before")(_json_text)


class PieceToolCall(Answer):
    index: int | None = None
    id: str | None = None
    function: PieceFunction | None = None


class ChunkDelta(Answer):
    content: str | None = None
    tool_calls: list[PieceToolCall] | None = None


class ChunkChoice(Answer):
    index: int = 0
    delta: ChunkDelta = Field(default_factory=ChunkDelta)
    finish_reason: str | None = None
    logprobs: WireLogprobs | None = None


class ChatChunk(Answer):
    """One `data:` event of a streamed chat completion."""

    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: WireUsage | None = None


# -- legacy text completions ----------------------------------------------------------------------


class TextChoice(Answer):
    index: int = 0
    text: str | None = None
    finish_reason: str | None = None
    logprobs: LegacyLogprobs | None = None


class TextAnswer(Answer):
    """A whole text completion (`POST /completions` without `stream`)."""

    choices: list[TextChoice] = Field(min_length=1)
    usage: WireUsage | None = None

    def to_core(self, logprobs: bool) -> Completion:
        said = []
        for c in sorted(self.choices, key=lambda c: c.index):
            lps = c.logprobs.to_core() if c.logprobs is not None else None
            reason = finish(c.finish_reason, False)
            said.append(_Said(c.text or "", reason, (), _asked(lps, logprobs)))
        return _completion(said, self.usage)


class TextChunk(Answer):
    """One `data:` event of a streamed text completion."""

    choices: list[TextChoice] = Field(default_factory=list)
    usage: WireUsage | None = None


# -- embeddings -----------------------------------------------------------------------------------


class EmbeddingRow(Answer):
    index: int = 0
    embedding: list[float]


class EmbeddingAnswer(Answer):
    data: list[EmbeddingRow]
    usage: WireUsage | None = None

    def vectors(self) -> list[list[float]]:
        """The vectors in input order."""
        return [r.embedding for r in sorted(self.data, key=lambda r: r.index)]


# -- streams --------------------------------------------------------------------------------------


class ChunkReader:
    """Turns the chunks of one streamed answer (chat or text) into `Delta`s, in order.

    Feed each chunk to `chat` or `text` and yield what it gives; `end` gives the closing Deltas.
    A choice's finish Delta is held back until the next one arrives, so that the last Delta of
    the stream carries a finish reason and the usage (which OpenAI sends after the finish)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[int, _Started]] = {}  # choice -> call index -> call
        self._seen: set[int] = {0}
        self._finished: set[int] = set()
        self._held: Delta | None = None
        self._usage: WireUsage | None = None

    def chat(self, chunk: ChatChunk) -> Iterator[Delta]:
        self._usage = chunk.usage or self._usage
        for c in chunk.choices:
            pieces = self._pieces(c.index, c.delta.tool_calls or ())
            lps = c.logprobs.to_core() if c.logprobs is not None and c.logprobs.content else None
            yield from self._piece(c.index, c.delta.content or "", pieces, lps)
            yield from self._finish(c.index, c.finish_reason)

    def text(self, chunk: TextChunk) -> Iterator[Delta]:
        self._usage = chunk.usage or self._usage
        for c in chunk.choices:
            lps = c.logprobs.to_core() if c.logprobs is not None and c.logprobs.tokens else None
            yield from self._piece(c.index, c.text or "", (), lps)
            yield from self._finish(c.index, c.finish_reason)

    def end(self) -> Iterator[Delta]:
        """The finish Deltas still owed: the held one, and `stop` for any choice the upstream
        left unfinished; the last carries the usage."""
        for c in sorted(self._seen - self._finished):
            yield from self._finish(c, "stop")
        assert self._held is not None  # choice 0 is always seen, so something was held
        yield self._held.model_copy(update={"usage": usage_of(self._usage)})

    def _piece(
        self,
        choice: int,
        text: str,
        pieces: tuple[ToolCallDelta, ...],
        logprobs: list[TokenLogprob] | None,
    ) -> Iterator[Delta]:
        if choice in self._finished:
            return
        self._seen.add(choice)
        if text or pieces or logprobs:
            yield Delta(text=text, tool_calls=pieces, logprobs=logprobs, choice=choice)

    def _finish(self, choice: int, reason: str | None) -> Iterator[Delta]:
        if not reason or choice in self._finished:  # some servers send "" until the end
            return
        self._seen.add(choice)
        self._finished.add(choice)
        if self._held is not None:
            yield self._held
        called = bool(self._calls.get(choice))
        self._held = Delta(choice=choice, finish_reason=finish(reason, called))

    def _pieces(
        self, choice: int, raw: list[PieceToolCall] | tuple[()]
    ) -> tuple[ToolCallDelta, ...]:
        """Tool-call pieces as OpenAI streams them: id and name on a call's first piece only."""
        calls = self._calls.setdefault(choice, {})
        out = []
        for p in raw:
            fn = p.function or PieceFunction()
            index = p.index
            if index is None:  # vendors that leave the index out: a new id starts a new call
                last = max(calls, default=None)
                fresh = last is None or (p.id is not None and p.id != calls[last].id)
                index = len(calls) if fresh else last
            assert index is not None
            args = fn.arguments or ""
            call = calls.get(index)
            if call is None:
                calls[index] = _Started(p.id or new_call_id(), bool(fn.name))
                out.append(
                    ToolCallDelta(index=index, id=calls[index].id, name=fn.name, arguments=args)
                )
            elif fn.name and not call.named:
                call.named = True
                out.append(ToolCallDelta(index=index, name=fn.name, arguments=args))
            elif args:
                out.append(ToolCallDelta(index=index, arguments=args))
        return tuple(out)


class _Started:
    """A streamed tool call seen so far: its id, and whether its name was passed on."""

    __slots__ = ("id", "named")

    def __init__(self, id: str, named: bool) -> None:
        self.id, self.named = id, named
