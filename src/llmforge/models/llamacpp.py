"""In-process llama.cpp chat models (any GGUF file) through llama-cpp-python.

Inference runs on one dedicated worker thread per model (a llama context is not thread-safe), so the
event loop never blocks. Requests wait in a bounded queue (`max_queue`); past it they are refused
with OverloadedError rather than piling up. Tokens cross to the event loop one by one as they are
sampled; a consumer that stops listening (client disconnect) sets a flag that the token loop checks
before every token, so generation stops at once.

What a call may ask, and where it is done:

- the prompt: the model's chat template (GGUF metadata, or `chat_template`), with tools and tool
  turns written in (`chat_prompt`);
- tool calls: the answer is a JSON envelope held to a grammar built from the tools' schemas, read
  into text and call pieces as it is generated (`tool_envelope`); `response_format` is a grammar
  from its schema; grammars are cached per schema;
- the token loop, log probabilities and n answers to one prompt (`llama_decoder`);
- `stream_text`: raw continuation of a prompt, without the template (legacy completions);
- `count_prompt_tokens`: the exact prompt, tokenized on the caller's thread.

Images are refused (400) before a call is queued: these models read text only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmforge.core.config import ModelConfig
from llmforge.core.errors import (
    ConfigError,
    ContextWindowExceededError,
    InvalidRequestError,
    LLMForgeError,
    ModelError,
)
from llmforge.core.types import (
    Completion,
    Delta,
    FinishReason,
    Message,
    Sampling,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from llmforge.models import tool_envelope
from llmforge.models.base import ChatModel, CompletionBuilder, ModelContext
from llmforge.models.builtin import resolve
from llmforge.models.chat_prompt import ChatPrompt
from llmforge.models.llama_decoder import Decoder, Step, seed_for
from llmforge.models.local_queue import QueueStats, SlotQueue
from llmforge.models.tool_envelope import EnvelopeReader

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096
GRAMMAR_CACHE = 64  # compiled schemas kept (tools differ per request: bounded)
_END = object()

Push = Callable[[Any], None]
EngineFinish = Literal["stop", "length", "cancelled"]  # why an engine stopped generating


class LlamaCppChatModel:
    def __init__(self, config: ModelConfig) -> None:
        if not config.path:
            raise ConfigError(
                f"model '{config.name}': provider llamacpp needs `path` (a .gguf file)"
            )
        self.name = config.name
        self._path = resolve(config.path)
        self._n_ctx = config.context_length or DEFAULT_CONTEXT
        self._threads = config.threads or os.cpu_count() or 1
        self._template = config.chat_template
        self._queue = SlotQueue(config.name, 1, config.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"llamacpp-{config.name}")
        self._llm: Any = None
        self._prompt: ChatPrompt | None = None
        self._decoder: Decoder | None = None
        self._grammars = GrammarCache()

    # -- public API -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the weights now (otherwise the first request does)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_loaded)

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        return await whole_answer(self.stream(messages, sampling), sampling)

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        refuse_images(self.name, messages)
        envelope = tool_envelope.envelope_schema(sampling)  # a bad tool_choice fails here
        async with aclosing(self._serve(self._chat, messages, sampling, envelope)) as deltas:
            async for delta in deltas:
                yield delta

    async def stream_text(self, prompt: str, sampling: Sampling) -> AsyncGenerator[Delta, None]:
        """Continue `prompt` as raw text (no chat template), like `stream` otherwise."""
        refuse_bad_text_prompt(prompt, sampling)
        async with aclosing(self._serve(self._text, prompt, sampling)) as deltas:
            async for delta in deltas:
                yield delta

    def count_prompt_tokens(self, messages: Sequence[Message], sampling: Sampling) -> int | None:
        """The prompt's exact tokens (template, tool descriptions), or None before the weights
        are loaded or for a request the model will refuse. Runs on the caller's thread while the
        worker may be decoding: rendering reads the compiled template and tokenizing reads the
        vocabulary only (llama.cpp's server tokenizes on its HTTP threads the same way)."""
        prompt, decoder = self._prompt, self._decoder
        if prompt is None or decoder is None:
            return None
        try:
            return len(decoder.tokenize(prompt.render(messages, sampling), special=True))
        except LLMForgeError:
            return None

    def queue_stats(self) -> QueueStats:
        """Calls waiting for the worker and how long they waited (for /metrics)."""
        return self._queue.stats()

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the queue ------------------------------------------------------------------------------

    async def _serve(self, job: Callable[..., None], *args: Any) -> AsyncGenerator[Delta, None]:
        """Run `job(*args, push, cancel)` on the worker thread once the model's one slot is this
        call's (first come, first served; OverloadedError past `max_queue` waiting) and yield what
        it pushes."""
        async with self._queue.slot():
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            cancel = threading.Event()

            def push(item: Any) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            work = loop.run_in_executor(self._executor, self._work, job, args, push, cancel)
            work.add_done_callback(_consume_exception)
            try:
                while (item := await queue.get()) is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                cancel.set()

    # -- worker thread --------------------------------------------------------------------------

    def _work(
        self, job: Callable[..., None], args: tuple[Any, ...], push: Push, cancel: threading.Event
    ) -> None:
        try:
            if not cancel.is_set():  # a call cancelled while queued never starts
                job(*args, push, cancel)
        except Exception as e:  # handed to the awaiting coroutine, never lost in this thread
            push(
                e
                if isinstance(e, LLMForgeError)
                else ModelError(f"model '{self.name}' failed: {e!r}")
            )
        finally:
            push(_END)

    def _ensure_loaded(self) -> tuple[ChatPrompt, Decoder]:
        if self._prompt is not None and self._decoder is not None:
            return self._prompt, self._decoder
        from llama_cpp import Llama

        path: Path = self._path
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=self._n_ctx,
                n_threads=self._threads,
                n_threads_batch=self._threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"model '{self.name}': cannot load GGUF '{path}': {e}") from None
        prompt = chat_prompt_of(self.name, llm, self._template)
        self._llm = llm
        self._prompt = prompt
        self._decoder = Decoder(llm)
        return prompt, self._decoder

    def _chat(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        envelope: dict[str, Any] | None,
        push: Push,
        cancel: threading.Event,
    ) -> None:
        prompt, decoder = self._ensure_loaded()
        # the template writes its own BOS, so none is added (llama-cpp-python does the same)
        tokens = decoder.tokenize(prompt.render(messages, sampling), special=True)
        self._check_room(decoder, tokens, "messages")
        held = Constraint.for_chat(self._grammars, sampling, envelope, prompt.stop)
        self._decode(decoder, tokens, sampling, held, push, cancel)

    def _text(self, text: str, sampling: Sampling, push: Push, cancel: threading.Event) -> None:
        _, decoder = self._ensure_loaded()
        tokens = decoder.tokenize(text, special=True, add_bos=decoder.add_bos)
        self._check_room(decoder, tokens, "prompt")
        held = Constraint.for_text(self._grammars, sampling)
        self._decode(decoder, tokens, sampling, held, push, cancel)

    def _check_room(self, decoder: Decoder, tokens: list[int], param: str) -> None:
        check_room(self.name, len(tokens), decoder.n_ctx, param)

    def _decode(
        self,
        decoder: Decoder,
        tokens: list[int],
        sampling: Sampling,
        held: Constraint,
        push: Push,
        cancel: threading.Event,
    ) -> None:
        """Answer the prompt `tokens` `sampling.n` times, pushing Deltas (choice by choice, each
        ending with its finish reason; the last one carries the usage of the whole call)."""
        room = decoder.n_ctx - len(tokens)
        max_tokens = min(sampling.max_tokens or room, room)
        decoder.evaluate(tokens)
        generated = 0
        for choice in range(sampling.n):
            answer = decoder.answer(
                sampling,
                seed=seed_for(sampling, choice),
                grammar=held.grammar,
                max_tokens=max_tokens,
                cancel=cancel,
            )
            shaper = ChoiceShaper(choice, held.envelope, held.stops)
            steps = answer.steps()
            try:
                for step in steps:
                    for delta in shaper.step(step):
                        push(delta)
                    if shaper.stopped:
                        break
            finally:
                steps.close()
            generated += answer.tokens
            last = choice == sampling.n - 1 or cancel.is_set()
            usage = Usage(prompt_tokens=len(tokens), completion_tokens=generated)
            push(shaper.end(answer.finish, answer.tail, usage if last else None))
            if last:
                break


def chat_prompt_of(name: str, llm: Any, template: str | None) -> ChatPrompt:
    """The prompt renderer of a loaded GGUF (weights or vocabulary only): its own chat template,
    or `template` when one is configured."""
    template = template or llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ConfigError(
            f"model '{name}': the GGUF has no chat template; set `chat_template` in llmforge.yaml"
        )
    eos, bos = llm.token_eos(), llm.token_bos()
    try:
        return ChatPrompt(
            template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        )
    except ConfigError as e:
        raise ConfigError(f"model '{name}': {e.message}") from None


def refuse_images(name: str, messages: Sequence[Message]) -> None:
    """GGUF chat models here read text only: a message with images is a 400, not ignored."""
    if any(m.images for m in messages):
        raise InvalidRequestError(
            f"model '{name}' reads text only: remove the image parts, or send them to "
            "a model that reads images",
            param="messages",
        )


def refuse_bad_text_prompt(prompt: str, sampling: Sampling) -> None:
    """A raw-text continuation needs text and cannot call tools."""
    if not prompt:
        raise InvalidRequestError("the prompt is empty; give text to continue", param="prompt")
    if sampling.calls_tools:
        raise InvalidRequestError(
            "a text completion cannot call tools; use chat completions", param="tools"
        )


@dataclass(frozen=True)
class Constraint:
    """How one answer is held, whichever engine decodes it: its grammar (None: free text),
    whether it is a tool-call envelope, and the stop sequences that end it (in an envelope, user
    stops apply to the text of a `response` only, so the engine itself must not stop on them)."""

    grammar: str | None
    envelope: bool
    stops: tuple[str, ...]

    @property
    def engine_stops(self) -> tuple[str, ...]:
        """The stops an engine may cut at itself (none inside an envelope)."""
        return () if self.envelope else self.stops

    @classmethod
    def for_chat(
        cls,
        grammars: GrammarCache,
        sampling: Sampling,
        envelope: dict[str, Any] | None,
        template_stops: Sequence[str],
    ) -> Constraint:
        if envelope is not None:
            return cls(grammars.get(envelope, param="tools"), True, sampling.stop)
        return cls.for_text(grammars, sampling, (*sampling.stop, *template_stops))

    @classmethod
    def for_text(
        cls, grammars: GrammarCache, sampling: Sampling, stops: Sequence[str] | None = None
    ) -> Constraint:
        schema = sampling.json_schema
        grammar = grammars.get(schema, param="response_format") if schema else None
        return cls(grammar, False, tuple(sampling.stop if stops is None else stops))


async def whole_answer(stream: AsyncGenerator[Delta, None], sampling: Sampling) -> Completion:
    """A local stream folded into one answer; a call cut off by max_tokens is left out."""
    builder = CompletionBuilder()
    async for delta in stream:
        builder.add(delta)
    return builder.result(logprobs=sampling.logprobs, whole_calls_only=True)


def check_room(name: str, n_prompt: int, n_ctx: int, param: str) -> None:
    """ContextWindowExceededError (400) when a prompt leaves no room to answer in `n_ctx`."""
    if n_prompt >= n_ctx:
        raise ContextWindowExceededError(
            f"The prompt is {n_prompt} tokens; model '{name}' has a context of {n_ctx}. "
            f"Shorten the {param} or raise `context_length`.",
            param=param,
        )


class GrammarCache:
    """GBNF grammars of JSON schemas (property order kept: it is the order generated), the
    `GRAMMAR_CACHE` most recently used kept compiled."""

    def __init__(self) -> None:
        self._grammars: OrderedDict[str, str] = OrderedDict()  # JSON schema -> its grammar

    def get(self, schema: dict[str, Any], *, param: str) -> str:
        key = json.dumps(schema)
        cached = self._grammars.get(key)
        if cached is not None:
            self._grammars.move_to_end(key)
            return cached
        from llama_cpp import LlamaGrammar

        try:
            grammar = str(
                LlamaGrammar.from_json_schema(
                    json.dumps(_bounded_integers_as_enums(schema)), verbose=False
                )._grammar
            )
        except Exception as e:  # llama-cpp-python's converter raises plain exceptions
            raise InvalidRequestError(
                f"the JSON schema cannot be turned into a grammar: {e}; use plain JSON Schema "
                "(types, properties, required, enum, const, arrays, anyOf, $ref)",
                param=param,
            ) from None
        self._grammars[key] = grammar
        if len(self._grammars) > GRAMMAR_CACHE:
            self._grammars.popitem(last=False)
        return grammar


ENUMERATED_INT_RANGE = 256  # integer ranges up to this many values become an enum in the grammar


def _bounded_integers_as_enums(node: Any) -> Any:
    """The schema with each bounded integer (`minimum`/`maximum`, exclusive or not, `multipleOf`)
    of at most ENUMERATED_INT_RANGE values written as an `enum`: llama-cpp-python's converter
    ignores numeric bounds, and an enum is something its grammar enforces."""
    if isinstance(node, list):
        return [_bounded_integers_as_enums(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _bounded_integers_as_enums(v) for k, v in node.items()}
    if out.get("type") != "integer" or "enum" in out:
        return out
    low, high = out.get("minimum"), out.get("maximum")
    if isinstance(out.get("exclusiveMinimum"), int | float):
        low = math.floor(out["exclusiveMinimum"]) + 1
    if isinstance(out.get("exclusiveMaximum"), int | float):
        high = math.ceil(out["exclusiveMaximum"]) - 1
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        return out
    low, high = math.ceil(low), math.floor(high)
    step = out.get("multipleOf", 1)
    if high < low or high - low >= ENUMERATED_INT_RANGE or not isinstance(step, int) or step < 1:
        return out
    values = [v for v in range(low, high + 1) if v % step == 0]
    rest = {
        k: v
        for k, v in out.items()
        if k not in {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
        and k != "multipleOf"
    }
    return {**rest, "enum": values} if values else out


class ChoiceShaper:
    """Turns one answer's steps into Deltas: plain text cut at stop sequences, or an envelope read
    into response text and tool-call pieces; each step's log probability rides on its first Delta
    (on an empty one when the token showed nothing: envelope syntax, or text held back). Shared by
    both engines (in-process and llama-server)."""

    def __init__(self, choice: int, envelope: bool, stops: Sequence[str]) -> None:
        self.choice = choice
        self.reader = EnvelopeReader(_call_id) if envelope else None
        self.stops = StopMatcher(stops)
        self.stopped = False

    def step(self, step: Step) -> list[Delta]:
        deltas = self._pieces(step.text)
        if step.logprob is not None:
            if deltas:
                deltas[0].logprobs = [step.logprob]
            else:
                deltas.append(self._delta(logprobs=[step.logprob]))
        return deltas

    def end(self, ended: EngineFinish, tail: str, usage: Usage | None) -> Delta:
        """The choice's last Delta: `tail` (text the engine held back) and anything held here,
        and why it ended (`ended`: the engine's reason; a stop sequence seen here, or tool calls,
        override it)."""
        deltas = self._pieces(tail) if tail and not self.stopped else []
        if not self.stopped and (rest := self.stops.flush()):
            deltas.append(self._delta(text=rest))
        finish: FinishReason
        if self.stopped:
            finish = "stop"
        elif ended == "stop" and self.reader is not None and self.reader.calls:
            finish = "tool_calls"
        else:
            finish = ended
        text = "".join(d.text for d in deltas)
        calls = tuple(c for d in deltas for c in d.tool_calls)
        return self._delta(text=text, tool_calls=calls, finish_reason=finish, usage=usage)

    def _pieces(self, text: str) -> list[Delta]:
        pieces = self.reader.feed(text) if self.reader is not None else [text]
        deltas: list[Delta] = []
        held = ""
        for piece in pieces:
            if isinstance(piece, str):
                out, hit = self.stops.feed(piece)
                held += out
                if hit:
                    self.stopped = True
                    break
                continue
            if held:
                deltas.append(self._delta(text=held))
                held = ""
            deltas.append(self._delta(tool_calls=(piece,)))
        if held:
            deltas.append(self._delta(text=held))
        return deltas

    def _delta(
        self,
        *,
        text: str = "",
        tool_calls: tuple[ToolCallDelta, ...] = (),
        logprobs: list[TokenLogprob] | None = None,
        finish_reason: FinishReason | None = None,
        usage: Usage | None = None,
    ) -> Delta:
        return Delta(
            text=text,
            tool_calls=tool_calls,
            logprobs=logprobs,
            finish_reason=finish_reason,
            usage=usage,
            choice=self.choice,
        )


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back a tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop sequence was hit)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = max(
            (
                k
                for s in self.stops
                for k in range(min(len(s) - 1, len(self.pending)), 0, -1)
                if self.pending.endswith(s[:k])
            ),
            default=0,
        )
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


MAX_DEFAULT_PARALLEL = 8


def default_parallel() -> int:
    """Slots when `parallel` is not set: 4 per CPU core, at most 8 (on 2 cores, 8 streams gave
    the most tokens/s in total with the first token still quick: docs/decisions.md)."""
    return min(MAX_DEFAULT_PARALLEL, 4 * (os.cpu_count() or 1))


def create(config: ModelConfig, context: ModelContext | None = None) -> ChatModel:
    """The engine for a `llamacpp` model: a managed llama-server with `parallel` slots when
    `parallel` > 1 (the default) and the binary is built, else this in-process one."""
    parallel = config.parallel or default_parallel()
    if parallel == 1:
        return LlamaCppChatModel(config)
    from llmforge.models import llama_server
    from llmforge.models.llama_served import ServedLlamaChatModel

    found = llama_server.binary(config)
    if found is None:
        log.warning(
            "model '%s': llama-server is not built (looked for %s), so the model runs "
            "in-process, one request at a time; `make llama-tools` builds it (or set "
            "`parallel: 1` to silence this)",
            config.name,
            llama_server.default_binary(),
        )
        return LlamaCppChatModel(config)
    if not config.path:
        raise ConfigError(f"model '{config.name}': provider llamacpp needs `path` (a .gguf file)")
    threads = config.threads or os.cpu_count() or 1
    return ServedLlamaChatModel(config, found, parallel, threads)
