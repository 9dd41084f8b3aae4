"""llama.cpp chat models served by a managed llama-server (`parallel` > 1): continuous batching of
concurrent calls, prompt reuse, and every feature of the in-process engine.

LLMForge keeps doing what makes the local model behave the same whichever engine runs it: the
prompt is rendered here (the GGUF's chat template, tools and tool turns: `chat_prompt`) and
tokenized with the GGUF's own vocabulary, loaded without its weights; tool calls and
`response_format` are the same GBNF grammars (`tool_envelope`, `GrammarCache`); answers are read
into the same Deltas by the same `ChoiceShaper` (envelope reader, stop sequences, log
probabilities). llama-server only decodes: each call is one request to its native `/completion`
endpoint with the prompt as token ids, the grammar, the sampler chain and defaults of the in-process
engine (`llama_decoder`), `n_probs` for log probabilities, `cache_prompt` (a later turn of a
conversation, or another call with the same system prompt, processes only what is new; idle
slots' prompts are kept in host memory), streamed back token by token.

- **Slots and the queue.** At most `parallel` calls run at once (one server slot each, decoded
  together in one batch per step); up to `max_queue` more wait here, first come first served
  (`local_queue`), and one more is refused with OverloadedError. A long generation holds only its
  own slot. `n` answers run one after another in the call's slot; after the first, the prompt is
  cached and only its last token is evaluated again.
- **Failures.** A process that dies is restarted by `LlamaServer`; a call in flight fails with an
  `UpstreamError` (after its first token the stream ends with an error event; before it, the
  answer is tried once more on the restarted process, then the router retries or falls back),
  and new calls wait for the restart.
- **Closing a stream** closes its HTTP request, and llama-server stops that slot's generation.

Not here: starting or watching the process (`llama_server`), the in-process engine (`llamacpp`),
images (refused with a 400 as in-process).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, ClassVar, cast

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, LLMForgeError, UpstreamError
from llmforge.core.types import (
    Completion,
    Delta,
    Message,
    Sampling,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from llmforge.models import tool_envelope
from llmforge.models.builtin import resolve
from llmforge.models.chat_prompt import ChatPrompt
from llmforge.models.llama_decoder import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MIN_P,
    TOP_K,
    VOCAB_CTX,
    Step,
    Vocab,
    seed_for,
)
from llmforge.models.llama_server import LlamaServer, ServerSpec
from llmforge.models.llamacpp import (
    DEFAULT_CONTEXT,
    ChoiceShaper,
    Constraint,
    EngineFinish,
    GrammarCache,
    chat_prompt_of,
    check_room,
    refuse_bad_text_prompt,
    refuse_images,
    whole_answer,
)
from llmforge.models.local_queue import QueueStats, SlotQueue
from llmforge.models.openai_compat import HttpUpstream

log = logging.getLogger(__name__)

# the in-process engine's chain (llama-cpp-python's): no DRY, XTC or top-n-sigma
SAMPLERS = ["penalties", "top_k", "typ_p", "top_p", "min_p", "temperature"]
PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size
FINAL_FIELDS = ["stop", "stop_type", "tokens_predicted", "tokens_evaluated", "tokens_cached"]
FINISH: dict[str, EngineFinish] = {"eos": "stop", "word": "stop", "limit": "length"}


class ServedLlamaChatModel:
    """A GGUF chat model decoded by a managed llama-server with `parallel` slots."""

    def __init__(self, config: ModelConfig, binary: Path, parallel: int, threads: int) -> None:
        self.name = config.name
        self._path = resolve(config.path or "")
        self._n_ctx = config.context_length or DEFAULT_CONTEXT
        self._template = config.chat_template
        self._timeout_s = config.timeout_s
        self.server = LlamaServer(
            ServerSpec(
                name=config.name,
                binary=binary,
                model=self._path,
                parallel=parallel,
                context=self._n_ctx,
                threads=threads,
            )
        )
        self._queue = SlotQueue(config.name, parallel, config.max_queue)
        self._grammars = GrammarCache()
        self._vocab: Vocab | None = None
        self._prompt: ChatPrompt | None = None
        self._llm: Any = None  # the vocabulary-only llama.cpp model behind _vocab
        self._loading: asyncio.Future[None] | None = None
        self._client: _ServerClient | None = None

    # -- public API -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the vocabulary and chat template, start llama-server and wait until it is
        healthy (otherwise the first request does)."""
        await self._ensure_vocab()
        await self.server.ready(self._startup_timeout())

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        return await whole_answer(self.stream(messages, sampling), sampling)

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        refuse_images(self.name, messages)
        envelope = tool_envelope.envelope_schema(sampling)  # a bad tool_choice fails here
        vocab, prompt = await self._ensure_vocab()
        # the template writes its own BOS, so none is added (llama-cpp-python does the same)
        tokens = vocab.tokenize(prompt.render(messages, sampling), special=True)
        check_room(self.name, len(tokens), self._n_ctx, "messages")
        held = Constraint.for_chat(self._grammars, sampling, envelope, prompt.stop)
        run = self._run(tokens, sampling, held)
        async with aclosing(run) as deltas:
            async for delta in deltas:
                yield delta

    async def stream_text(self, prompt: str, sampling: Sampling) -> AsyncGenerator[Delta, None]:
        """Continue `prompt` as raw text (no chat template), like `stream` otherwise."""
        refuse_bad_text_prompt(prompt, sampling)
        vocab, _ = await self._ensure_vocab()
        tokens = vocab.tokenize(prompt, special=True, add_bos=vocab.add_bos)
        check_room(self.name, len(tokens), self._n_ctx, "prompt")
        run = self._run(tokens, sampling, Constraint.for_text(self._grammars, sampling))
        async with aclosing(run) as deltas:
            async for delta in deltas:
                yield delta

    def count_prompt_tokens(self, messages: Sequence[Message], sampling: Sampling) -> int | None:
        """The prompt's exact tokens (template, tool descriptions), or None before the vocabulary
        is loaded or for a request the model will refuse."""
        prompt, vocab = self._prompt, self._vocab
        if prompt is None or vocab is None:
            return None
        try:
            return len(vocab.tokenize(prompt.render(messages, sampling), special=True))
        except LLMForgeError:
            return None

    def queue_stats(self) -> QueueStats:
        """Calls waiting for a slot and how long they waited (for /metrics)."""
        return self._queue.stats()

    async def aclose(self) -> None:
        await self.server.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- one call -------------------------------------------------------------------------------

    async def _run(
        self,
        tokens: list[int],
        sampling: Sampling,
        held: Constraint,
    ) -> AsyncGenerator[Delta, None]:
        """Answer the prompt `tokens` `sampling.n` times in one slot, choice after choice, each
        ending with its finish reason; the last Delta carries the usage of the whole call."""
        max_tokens = min(sampling.max_tokens or self._n_ctx, self._n_ctx - len(tokens))
        generated = 0
        async with self._queue.slot():
            client = await self._connect()
            for choice in range(sampling.n):
                body = self._body(
                    tokens, sampling, choice, held.grammar, held.engine_stops, max_tokens
                )
                for attempt in range(2):
                    shaper = ChoiceShaper(choice, held.envelope, held.stops)
                    answer = _Answer(self, shaper, sampling)
                    shown = False
                    try:
                        async with aclosing(answer.deltas(client, body)) as deltas:
                            async for delta in deltas:
                                shown = True
                                yield delta
                        break
                    except UpstreamError as e:
                        # the engine died before this answer showed anything: once, on the
                        # restarted process (after that, the error goes to the client)
                        if shown or attempt or e.status_code is not None:
                            raise
                        client = await self._connect(replacing=client.url)
                generated += answer.tokens
                last = choice == sampling.n - 1
                usage = Usage(prompt_tokens=len(tokens), completion_tokens=generated)
                yield shaper.end(answer.finish, "", usage if last else None)

    def _body(
        self,
        tokens: list[int],
        sampling: Sampling,
        choice: int,
        grammar: str | None,
        stops: Sequence[str],
        max_tokens: int,
    ) -> dict[str, Any]:
        """The `/completion` request of one answer: the in-process engine's samplers and
        defaults, so an answer is the one it would give."""
        body: dict[str, Any] = {
            "prompt": tokens,
            "n_predict": max_tokens,
            "stream": True,
            "cache_prompt": True,
            "return_tokens": True,
            "response_fields": FINAL_FIELDS,
            "samplers": SAMPLERS,
            "temperature": (
                DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature
            ),
            "top_k": TOP_K,
            "top_p": sampling.top_p or DEFAULT_TOP_P,
            "min_p": MIN_P,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "repeat_last_n": PENALTY_LAST_N,
            "presence_penalty": sampling.presence_penalty or 0.0,
            "frequency_penalty": sampling.frequency_penalty or 0.0,
            "seed": seed_for(sampling, choice),
            "stop": list(stops),
        }
        if grammar is not None:
            body["grammar"] = grammar
        if sampling.logprobs:  # the server sends a token's own log probability only with n_probs
            body["n_probs"] = max(sampling.top_logprobs or 0, 1)
        return body

    # -- set-up ---------------------------------------------------------------------------------

    async def _ensure_vocab(self) -> tuple[Vocab, ChatPrompt]:
        if self._vocab is None or self._prompt is None:
            if self._loading is None:
                self._loading = asyncio.ensure_future(asyncio.to_thread(self._load_vocab))
            try:
                await asyncio.shield(self._loading)
            except BaseException:
                if self._loading.done():
                    self._loading = None  # a failed load is tried again by the next call
                raise
        assert self._vocab is not None and self._prompt is not None
        return self._vocab, self._prompt

    def _load_vocab(self) -> None:
        from llama_cpp import Llama

        try:
            llm = Llama(model_path=str(self._path), vocab_only=True, n_ctx=VOCAB_CTX, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(
                f"model '{self.name}': cannot load GGUF '{self._path}': {e}"
            ) from None
        self._prompt = chat_prompt_of(self.name, llm, self._template)
        self._llm = llm
        self._vocab = Vocab(llm)

    async def _connect(self, replacing: str | None = None) -> _ServerClient:
        """The client of the running process (waiting through a restart; `replacing`: the URL a
        call just failed on)."""
        url = await self.server.ready(self._timeout_s, replacing=replacing)
        client = self._client
        if client is None or client.url != url:
            if client is not None:
                await client.aclose()
            client = self._client = _ServerClient(self.name, url, self._timeout_s)
        return client

    def _startup_timeout(self) -> float:
        return max(self._timeout_s, 120.0)


class _Answer:
    """One answer streamed from llama-server into Deltas. Afterwards `finish` says why it ended
    and `tokens` how many tokens were generated (the end-of-generation token not counted, as
    in-process)."""

    def __init__(
        self, model: ServedLlamaChatModel, shaper: ChoiceShaper, sampling: Sampling
    ) -> None:
        assert model._vocab is not None
        self._name = model.name
        self._vocab = model._vocab
        self._shaper = shaper
        self._top = (sampling.top_logprobs or 0) if sampling.logprobs else None
        self.finish: EngineFinish = "cancelled"
        self.tokens = 0

    async def deltas(
        self, client: _ServerClient, body: dict[str, Any]
    ) -> AsyncGenerator[Delta, None]:
        # an async generator: closing it closes the request, which stops the slot
        events = cast(AsyncGenerator[dict[str, Any], None], client.sse("completion", body))
        async with aclosing(events):
            async for event in events:
                if event.get("stop") is True:
                    self.finish = FINISH.get(str(event.get("stop_type")), "stop")
                    self.tokens = int(event.get("tokens_predicted") or 0)
                    if event.get("stop_type") == "eos":
                        self.tokens = max(self.tokens - 1, 0)
                    return
                ids: list[int] = event.get("tokens") or []
                if ids and all(self._vocab.is_eog(t) for t in ids):
                    continue  # the end-of-generation token: no text, no log probability
                probs = event.get("completion_probabilities")
                top = self._top
                logprob = _logprob(probs[0], top) if probs and top is not None else None
                step = Step(ids[0] if ids else -1, str(event.get("content") or ""), logprob)
                for delta in self._shaper.step(step):
                    yield delta
                if self._shaper.stopped:  # a stop sequence seen here: hang up, the slot stops
                    self.finish = "stop"
                    return
        raise UpstreamError(
            f"model '{self._name}': the llama-server engine ended an answer without its last "
            "event; retry"
        )


def _logprob(entry: dict[str, Any], top: int) -> TokenLogprob:
    return TokenLogprob(
        token=str(entry.get("token", "")),
        logprob=float(entry.get("logprob", 0.0)),
        bytes=entry.get("bytes"),
        top_logprobs=[
            TopLogprob(
                token=str(alt.get("token", "")),
                logprob=float(alt.get("logprob", 0.0)),
                bytes=alt.get("bytes"),
            )
            for alt in (entry.get("top_logprobs") or [])[:top]
        ],
    )


class _ServerClient(HttpUpstream):
    """HTTP to one llama-server process on 127.0.0.1 (never through a proxy)."""

    # a fresh loopback connection per call: a kept-alive one that llama-server's HTTP threads
    # closed while idle would fail the next call that picks it
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}
    context_exceeded: ClassVar[str] = "exceed_context_size"
    api: ClassVar[str] = "llama-server's native API"

    def __init__(self, name: str, url: str, timeout_s: float) -> None:
        super().__init__(name, url, None, timeout_s)
        self.url = url
        self._proxy = None

    def _unreachable(self, e: Exception) -> UpstreamError:
        return UpstreamError(
            f"model '{self.name}': the llama-server engine at {self.url} is gone ({e}); it is "
            "being restarted: retry"
        )

    def _broken(self, e: Exception) -> UpstreamError:
        return UpstreamError(
            f"model '{self.name}': the llama-server engine dropped the call ({e!r}); it is "
            "being restarted if it died: retry"
        )
