"""The gateway's request path without HTTP.

    admission (key scope, rate limits, budget reservation) -> input guards -> cache lookup ->
    router (deployments, retries, fallbacks) -> cost and usage -> cache store -> output guards ->
    settle -> trace + metrics

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
    Message,
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


class Screen(Protocol):
    """One call's guards (the guard package's `Screen`): what the model sees, what the client
    gets, what the trace keeps."""

    @property
    def masks_traces(self) -> bool: ...

    async def check_input(self, messages: Sequence[Message]) -> list[Message] | Completion:
        """The messages the model sees, or an answer to give instead (a refusal); raises when
        a guard blocks the input."""
        ...

    async def check_output(self, completion: Completion) -> Completion: ...

    def watch(self, deltas: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]: ...

    def scrub(self, text: str) -> str: ...


class Guards(Protocol):
    """Which guards a call gets: None when none apply (then the call pays nothing for them)."""

    def screen(
        self, model: str, key_id: str | None, key_name: str | None, call_id: str
    ) -> Screen | None: ...


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
        guards: Guards | None = None,
    ) -> None:
        self.catalog = catalog
        self.guards = guards
        self.recorder = recorder
        self.router = router or Router(catalog, RouterConfig())
        self.admission = admission
        self.cache = cache
        self.observers = list(observers)
        self._pending: set[asyncio.Task[None]] = set()

    async def complete(self, call: Call) -> Completion:
        self.catalog.config(call.model)  # unknown model: 404 before anything else
        await self._admit(call)
        screen = self._screen(call)
        try:
            refusal = await self._check_input(call, screen)
            completion = refusal or await self._lookup(call)
            if completion is None:
                completion = await self.router.complete(call)
                self._account(call, completion.usage)
                await self._store(call, completion)
            if screen is not None and refusal is None:
                completion = await screen.check_output(completion)
            _answered(call, completion, completion.finish_reason)
            return completion
        except BaseException as e:
            _failed(call, e)
            raise
        finally:
            await self._finish(call, screen)

    async def stream(self, call: Call) -> AsyncGenerator[Delta, None]:
        """Deltas of the answer. Closing the generator early (client gone) cancels the upstream
        call; the call is settled and traced whichever way it ends."""
        self.catalog.config(call.model)
        await self._admit(call)
        screen = self._screen(call)
        answer = CompletionBuilder()
        raw = answer if screen is None else CompletionBuilder()  # what the model said: cached
        cached: Completion | None = None
        try:
            cached = await self._check_input(call, screen) or await self._lookup(call)
            deltas = replay(cached) if cached else self.router.stream(call)
            if screen is not None:  # output guards over a sliding window; placeholders restored
                deltas = screen.watch(_tap(deltas, raw))
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
                self._finish_soon(call, raw.result(call.sampling.logprobs), screen)
            else:
                self._finish_soon(call, None, screen)  # no awaiting: a cancelled stream may not

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

    def _screen(self, call: Call) -> Screen | None:
        if self.guards is None:
            return None
        caller = call.caller
        return self.guards.screen(
            call.model, caller.key_id if caller else None, caller.name if caller else None, call.id
        )

    async def _check_input(self, call: Call, screen: Screen | None) -> Completion | None:
        """Input guards: the messages the model sees are put on the call; a refusal is
        returned as the answer."""
        if screen is None:
            return None
        checked = await screen.check_input(call.messages)
        if isinstance(checked, Completion):
            return checked
        call.messages = checked
        if call.kind == "text" and checked:
            call.prompt = checked[-1].content
        return None

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

    async def _finish(self, call: Call, screen: Screen | None = None) -> None:
        if self.admission is not None:
            await self.admission.settle(call)
        self._record(call, screen)

    def _finish_soon(
        self, call: Call, answer: Completion | None = None, screen: Screen | None = None
    ) -> None:
        work = self._store_and_finish(call, answer, screen)
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store_and_finish(
        self, call: Call, answer: Completion | None, screen: Screen | None
    ) -> None:
        try:
            if answer is not None:
                await self._store(call, answer)
        finally:
            await self._finish(call, screen)

    def _record(self, call: Call, screen: Screen | None = None) -> None:
        if screen is not None and screen.masks_traces:  # traces keep personal data masked
            call.messages = [
                m.model_copy(update={"content": screen.scrub(m.content)}) for m in call.messages
            ]
            call.output, call.prompt = screen.scrub(call.output), screen.scrub(call.prompt)
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


async def _tap(
    deltas: AsyncGenerator[Delta, None], into: CompletionBuilder
) -> AsyncGenerator[Delta, None]:
    """`deltas`, each also added to `into`; closing it closes `deltas`."""
    try:
        async for delta in deltas:
            into.add(delta)
            yield delta
    finally:
        await deltas.aclose()


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
