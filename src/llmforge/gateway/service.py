"""The gateway's request path without HTTP.

    admission (key scope, rate limits, budget reservation) -> cache lookup -> router
    (deployments, retries, fallbacks) -> cost and usage -> cache store -> settle -> trace + metrics

Both the HTTP routes and `llmforge chat` drive a `Call` through `Gateway`, so every call is
admitted, routed, accounted and traced the same way. The pluggable steps are small protocols; each
is optional.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from llmforge.core.config import RouterConfig
from llmforge.core.errors import LLMForgeError
from llmforge.core.types import (
    Completion,
    Delta,
    Embeddings,
    FinishReason,
    ToolCallDelta,
    Usage,
)
from llmforge.gateway.call import Call, cost_usd
from llmforge.gateway.router import Router
from llmforge.models import CompletionBuilder, ModelCatalog
from llmforge.traces import TraceRecorder

CACHEABLE: tuple[FinishReason, ...] = ("stop", "length", "tool_calls")


class Admission(Protocol):
    """Decides whether a call may run (raises if not) and settles what it used afterwards."""

    async def admit(self, call: Call) -> None: ...

    async def settle(self, call: Call) -> None: ...


class ResponseCache(Protocol):
    async def lookup(self, call: Call) -> Completion | None: ...

    async def store(self, call: Call, completion: Completion) -> None: ...


class CallObserver(Protocol):
    def finished(self, call: Call) -> None: ...


class Gateway:
    def __init__(
        self,
        catalog: ModelCatalog,
        recorder: TraceRecorder | None = None,
        *,
        router: Router | None = None,
        admission: Admission | None = None,
        cache: ResponseCache | None = None,
        observers: Sequence[CallObserver] = (),
    ) -> None:
        self.catalog = catalog
        self.recorder = recorder
        self.router = router or Router(catalog, RouterConfig())
        self.admission = admission
        self.cache = cache
        self.observers = list(observers)
        self._pending: set[asyncio.Task[None]] = set()

    async def complete(self, call: Call) -> Completion:
        self.catalog.config(call.model)  # unknown model: 404 before anything else
        await self._admit(call)
        try:
            completion = await self._lookup(call)
            if completion is None:
                completion = await self.router.complete(call)
                self._account(call, completion.usage)
                await self._store(call, completion)
            _answered(call, completion, completion.finish_reason)
            return completion
        except BaseException as e:
            _failed(call, e)
            raise
        finally:
            await self._finish(call)

    async def stream(self, call: Call) -> AsyncGenerator[Delta, None]:
        """Deltas of the answer. Closing the generator early (client gone) cancels the upstream
        call; the call is settled and traced whichever way it ends."""
        self.catalog.config(call.model)
        await self._admit(call)
        answer = CompletionBuilder()
        cached: Completion | None = None
        try:
            cached = await self._lookup(call)
            deltas = replay(cached) if cached else self.router.stream(call)
            try:
                async for delta in deltas:
                    if call.ttft_s is None and (delta.text or delta.tool_calls):
                        call.ttft_s = call.elapsed_s()
                    answer.add(delta)
                    if delta.usage and not cached:
                        self._account(call, delta.usage)
                    yield delta
            finally:
                await deltas.aclose()
        except GeneratorExit:  # closed by the consumer: after the final delta, a normal end
            raise
        except BaseException as e:
            _failed(call, e)
            raise
        finally:
            complete = answer.result(call.sampling.logprobs)
            _answered(call, complete, answer.finish_reason())
            if call.status == "ok" and call.finish_reason in (None, "cancelled"):
                call.status = "cancelled"
            finished = all(c.finish_reason in CACHEABLE for c in complete.choices())
            if cached is None and call.status == "ok" and finished:
                self._finish_soon(call, complete)
            else:
                self._finish_soon(call)  # no awaiting here: a cancelled stream may not wait

    async def embed(self, call: Call) -> Embeddings:
        backend = self.catalog.embedder(call.model)
        await self._admit(call)
        try:
            start = time.perf_counter()
            result = await backend.embed(call.inputs)
            call.upstream_s += time.perf_counter() - start
            call.usage = Usage(prompt_tokens=result.prompt_tokens)
            dims = len(result.vectors[0]) if result.vectors else 0
            call.output = f"{len(result.vectors)} vectors of {dims}"
            call.served_by = call.model
            return result
        except BaseException as e:
            _failed(call, e)
            raise
        finally:
            await self._finish(call)

    async def drain(self) -> None:
        """Wait for settlements of finished streams (shutdown, tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # -- steps ----------------------------------------------------------------------------------

    async def _admit(self, call: Call) -> None:
        """Refusals (scope, limits, budget) are recorded like any other failed call."""
        if self.admission is None:
            return
        try:
            await self.admission.admit(call)
        except BaseException as e:
            _failed(call, e)
            self._record(call)
            raise

    async def _lookup(self, call: Call) -> Completion | None:
        if self.cache is None or not call.use_cache:
            return None
        return await self.cache.lookup(call)

    async def _store(self, call: Call, completion: Completion) -> None:
        if self.cache is not None and call.use_cache:
            await self.cache.store(call, completion)

    def _account(self, call: Call, usage: Usage) -> None:
        call.usage = usage
        if call.served_by is not None:
            call.cost_usd = cost_usd(self.catalog.config(call.served_by).price, usage)

    async def _finish(self, call: Call) -> None:
        if self.admission is not None:
            await self.admission.settle(call)
        self._record(call)

    def _finish_soon(self, call: Call, answer: Completion | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self._store_and_finish(call, answer))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store_and_finish(self, call: Call, answer: Completion | None) -> None:
        try:
            if answer is not None:
                await self._store(call, answer)
        finally:
            await self._finish(call)

    def _record(self, call: Call) -> None:
        for observer in self.observers:
            observer.finished(call)
        if self.recorder is not None:
            self.recorder.record(call.to_trace())


def _answered(call: Call, completion: Completion, finish: FinishReason | None) -> None:
    """What the trace keeps of the answer: its text and tool calls (first choice), how it
    ended."""
    call.output, call.tool_calls = completion.text, completion.tool_calls
    call.finish_reason = finish


def _failed(call: Call, error: BaseException) -> None:
    if isinstance(error, LLMForgeError):
        call.status, call.error, call.error_type = "error", error.message, type(error).__name__
    elif isinstance(error, Exception):
        call.status, call.error, call.error_type = "error", repr(error), type(error).__name__
    else:  # cancelled: the client went away
        call.status = "cancelled"


async def replay(completion: Completion) -> AsyncGenerator[Delta, None]:
    """A cached answer as a stream: per choice, word-sized pieces of text, then each tool call
    (id and name, then its arguments), then the finish; usage and sources on the last."""
    choices = completion.choices()
    for choice in choices:
        for piece in re.findall(r"\s*\S+\s*", choice.text):
            yield Delta(text=piece, choice=choice.index)
        for i, call in enumerate(choice.tool_calls):
            yield Delta(
                tool_calls=(ToolCallDelta(index=i, id=call.id, name=call.name),),
                choice=choice.index,
            )
            yield Delta(
                tool_calls=(ToolCallDelta(index=i, arguments=call.arguments),),
                choice=choice.index,
            )
        last = choice is choices[-1]
        yield Delta(
            finish_reason=choice.finish_reason,
            choice=choice.index,
            usage=completion.usage if last else None,
            sources=completion.sources if last else (),
        )
