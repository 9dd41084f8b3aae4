"""The gateway's request path without HTTP: find the model, call it, time it, record the trace.

Both the HTTP routes and `llmforge chat` go through `Gateway`, so every call is traced the same way.
Routing, fallback, caching and guards (later issues) slot in here, not in the routes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from llmforge.core.errors import LLMForgeError
from llmforge.core.types import Completion, Delta, Embeddings, Message, Sampling
from llmforge.models import ModelCatalog
from llmforge.traces import Trace, TraceRecorder


class Gateway:
    def __init__(self, catalog: ModelCatalog, recorder: TraceRecorder | None = None) -> None:
        self.catalog = catalog
        self.recorder = recorder

    async def complete(
        self,
        model: str,
        messages: Sequence[Message],
        sampling: Sampling,
        trace_id: str | None = None,
    ) -> Completion:
        backend = self.catalog.chat(model)
        trace = self._trace(model, messages, sampling, trace_id, stream=False)
        start = time.perf_counter()
        try:
            completion = await backend.complete(messages, sampling)
        except BaseException as e:
            self._finish(trace, start, error=e)
            raise
        trace.output = completion.text
        trace.prompt_tokens = completion.usage.prompt_tokens
        trace.completion_tokens = completion.usage.completion_tokens
        self._finish(trace, start)
        return completion

    async def stream(
        self,
        model: str,
        messages: Sequence[Message],
        sampling: Sampling,
        trace_id: str | None = None,
    ) -> AsyncGenerator[Delta, None]:
        """Deltas of the answer; the trace is recorded when the stream ends, fails or is closed
        early."""
        backend = self.catalog.chat(model)
        trace = self._trace(model, messages, sampling, trace_id, stream=True)
        start = time.perf_counter()
        parts: list[str] = []
        error: BaseException | None = None
        finished = False
        deltas = backend.stream(messages, sampling)
        try:
            async for delta in deltas:
                if trace.ttft_ms is None and delta.text:
                    trace.ttft_ms = (time.perf_counter() - start) * 1000
                parts.append(delta.text)
                if delta.usage:
                    trace.prompt_tokens = delta.usage.prompt_tokens
                    trace.completion_tokens = delta.usage.completion_tokens
                if delta.finish_reason:
                    finished = delta.finish_reason != "cancelled"
                yield delta
        except BaseException as e:
            error = e
            raise
        finally:
            await deltas.aclose()  # stops generation now, not when garbage-collected
            trace.output = "".join(parts)
            if error is None and not finished:
                trace.status = "cancelled"
            self._finish(trace, start, error=error)

    async def embed(self, model: str, texts: Sequence[str]) -> Embeddings:
        backend = self.catalog.embedder(model)
        trace = Trace(kind="embedding", model=model, request={"input": list(texts)})
        start = time.perf_counter()
        try:
            result = await backend.embed(texts)
        except BaseException as e:
            self._finish(trace, start, error=e)
            raise
        trace.prompt_tokens = result.prompt_tokens
        trace.output = (
            f"{len(result.vectors)} vectors of {len(result.vectors[0]) if result.vectors else 0}"
        )
        self._finish(trace, start)
        return result

    def _trace(
        self,
        model: str,
        messages: Sequence[Message],
        sampling: Sampling,
        trace_id: str | None,
        stream: bool,
    ) -> Trace:
        request: dict[str, Any] = {
            "messages": [m.model_dump(exclude_none=True) for m in messages],
            "sampling": sampling.model_dump(exclude_none=True, exclude_defaults=True),
        }
        trace = Trace(model=model, request=request, stream=stream)
        if trace_id:
            trace.id = trace_id
        return trace

    def _finish(self, trace: Trace, start: float, error: BaseException | None = None) -> None:
        trace.latency_ms = (time.perf_counter() - start) * 1000
        if error is not None:
            if isinstance(error, LLMForgeError):
                trace.status, trace.error = "error", error.message
            elif isinstance(error, Exception):
                trace.status, trace.error = "error", repr(error)
            else:  # cancelled: the client went away
                trace.status = "cancelled"
        if self.recorder is not None:
            self.recorder.record(trace)
