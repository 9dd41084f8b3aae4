"""In-process llama.cpp chat models (any GGUF file) through llama-cpp-python.

Inference runs on one dedicated worker thread per model (a llama context is not thread-safe), so the
event loop never blocks. Requests wait in a bounded queue (`max_queue`); past it they are refused
with OverloadedError rather than piling up. Tokens cross to the event loop one by one as they are
sampled; a consumer that stops listening (client disconnect) sets a flag that llama.cpp checks after
every token, so generation stops at once. The chat template is the model's own (GGUF metadata)
unless the config overrides it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llmforge.core.config import ModelConfig
from llmforge.core.errors import (
    ConfigError,
    ContextWindowExceededError,
    InvalidRequestError,
    LLMForgeError,
    ModelError,
    OverloadedError,
)
from llmforge.core.types import Completion, Delta, FinishReason, Message, Sampling, Usage
from llmforge.models.base import ModelContext, collect
from llmforge.models.builtin import resolve

DEFAULT_CONTEXT = 4096
_END = object()


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
        self._max_inflight = config.max_queue + 1
        self._inflight = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"llamacpp-{config.name}")
        self._llm: Any = None
        self._format: Callable[..., Any] | None = None
        self._grammars: dict[str, Any] = {}  # JSON schema -> its compiled grammar

    # -- public API -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the weights now (otherwise the first request does)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_loaded)

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        return await collect(self.stream(messages, sampling))

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        if self._inflight >= self._max_inflight:
            raise OverloadedError(
                f"model '{self.name}' is busy: {self._inflight} requests in flight or queued "
                f"(max_queue {self._max_inflight - 1}); retry shortly"
            )
        self._inflight += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def push(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job = loop.run_in_executor(self._executor, self._generate, messages, sampling, push, cancel)
        job.add_done_callback(_consume_exception)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            self._inflight -= 1

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- worker thread --------------------------------------------------------------------------

    def _ensure_loaded(self) -> Any:
        if self._llm is not None:
            return self._llm
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

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
        template = self._template or llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(
                f"model '{self.name}': the GGUF has no chat template; "
                "set `chat_template` in llmforge.yaml"
            )
        eos, bos = llm.token_eos(), llm.token_bos()
        self._format = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        )
        self._llm = llm
        return llm

    def _generate(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        push: Callable[[Any], None],
        cancel: threading.Event,
    ) -> None:
        try:
            if not cancel.is_set():
                self._run(messages, sampling, push, cancel)
        except Exception as e:  # handed to the awaiting coroutine, never lost in this thread
            push(
                e
                if isinstance(e, LLMForgeError)
                else ModelError(f"model '{self.name}' failed: {e!r}")
            )
        finally:
            push(_END)

    def _run(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        push: Callable[[Any], None],
        cancel: threading.Event,
    ) -> None:
        from llama_cpp import StoppingCriteriaList

        llm = self._ensure_loaded()
        assert self._format is not None
        # Re-using the previous call's KV cache changes the numerics, so the same request could
        # answer differently the second time: start clean for reproducible (greedy) output.
        llm.reset()
        prompt = self._format(messages=[m.compact() for m in messages])
        tokens = llm.tokenize(
            prompt.prompt.encode("utf-8"), add_bos=not prompt.added_special, special=True
        )
        room = self._n_ctx - len(tokens)
        if room <= 0:
            raise ContextWindowExceededError(
                f"The prompt is {len(tokens)} tokens; model '{self.name}' has a context of "
                f"{self._n_ctx}. Shorten the conversation or raise `context_length`.",
                param="messages",
            )
        template_stop = [prompt.stop] if isinstance(prompt.stop, str) else list(prompt.stop or [])
        calls = 0  # llama.cpp asks once per sampled token, then once after its loop

        def step(_ids: Any, _logits: Any) -> bool:
            nonlocal calls
            calls += 1
            return cancel.is_set()

        options: dict[str, Any] = sampling.model_dump(
            exclude_none=True,
            include={"temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"},
        )
        if sampling.json_schema is not None:  # the sampler may only pick tokens the schema allows
            options["grammar"] = self._grammar(sampling.json_schema)
        stops = StopMatcher(sampling.stop)
        finish: FinishReason = "length"
        completion = 0
        chunks = llm.create_completion(
            tokens,
            max_tokens=min(sampling.max_tokens or room, room),
            stop=template_stop,
            stream=True,
            stopping_criteria=StoppingCriteriaList([step]),
            **options,
        )
        for chunk in chunks:
            choice = chunk["choices"][0]
            text, hit = stops.feed(choice["text"])
            if text:
                push(Delta(text=text))
            if hit or cancel.is_set():
                finish, completion = ("stop" if hit else "cancelled"), calls
                chunks.close()
                break
            if choice["finish_reason"]:
                finish = "length" if choice["finish_reason"] == "length" else "stop"
                # the end-of-generation token is sampled but not part of the answer
                completion = max(calls - 1 - (finish == "stop"), 0)
        else:
            if rest := stops.flush():
                push(Delta(text=rest))
        push(
            Delta(
                finish_reason=finish,
                usage=Usage(prompt_tokens=len(tokens), completion_tokens=completion),
            )
        )

    def _grammar(self, schema: dict[str, Any]) -> Any:
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            try:
                self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
            except Exception as e:  # llama.cpp's converter raises plain exceptions
                raise InvalidRequestError(
                    f"json_schema cannot be turned into a grammar: {e}; use plain JSON Schema",
                    param="json_schema",
                ) from None
        return self._grammars[key]


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


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def create(config: ModelConfig, context: ModelContext | None = None) -> LlamaCppChatModel:
    return LlamaCppChatModel(config)
