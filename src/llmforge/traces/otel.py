"""OpenTelemetry export of every traced call, in the GenAI semantic conventions, over OTLP/HTTP.

`OtelExporter` is a batch observer of the `TraceRecorder` (`recorder.observe(exporter.observe)`):
after a batch of traces is written, each becomes one span, timed from the call's start to its end,
named `{operation} {model}` (`chat local`), with the GenAI attributes (`gen_ai.operation.name`,
`gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.provider.name`, `gen_ai.usage.input_tokens`
/ `output_tokens`, `gen_ai.response.finish_reasons`, `gen_ai.response.id`, the request's sampling,
`gen_ai.response.time_to_first_chunk`), `error.type` and an error status for failed calls, and
LLMForge's own (`llmforge.latency_ms`, `.cost_usd`, `.cache`, `.retries`, `.fallbacks`,
`.deployment`, `.key_id`, `.status`). Prompts and answers are exported only with
`observability.otel.capture_content` (`gen_ai.input.messages` / `gen_ai.output.messages`).

Spans are made on a thread of the exporter's own (about 50 us each: done on the event loop, a
batch of 256 would stall it for milliseconds), fed by a bounded queue of batches (when it is full,
batches are dropped and counted in `dropped`); the SDK's `BatchSpanProcessor` sends them from its
thread as protobuf to the configured endpoint. So neither the request path nor the trace writer
waits on span making or on the collector; a collector that is down costs dropped spans (logged by
the SDK), never a slower call. Off by default: nothing
is built, and nothing leaves the machine, unless `observability.otel.endpoint` is set. This module
sets no global tracer provider (the process's other OpenTelemetry users are left alone) and does
not export metrics or logs (`/metrics` serves metrics).
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from llmforge import __version__
from llmforge.core.config import OtelConfig
from llmforge.core.settings import Settings
from llmforge.traces.query import prompt_text
from llmforge.traces.store import Trace

OPERATIONS = {"chat": "chat", "text": "text_completion", "embedding": "embeddings"}
# request sampling fields -> GenAI request attributes
SAMPLING_ATTRIBUTES = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "n": "gen_ai.request.choice.count",
}
NS = 1_000_000_000
MAX_PENDING_BATCHES = 64


class OtelExporter:
    """Turns written traces into spans and exports them (see the module docstring)."""

    def __init__(
        self,
        config: OtelConfig,
        providers: Mapping[str, str] | None = None,
        exporter: SpanExporter | None = None,
        schedule_delay_ms: float = 1000,
    ) -> None:
        self.config = config
        self._providers = dict(providers or {})
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=config.endpoint,
                headers=dict(config.headers),
                timeout=config.timeout_s,
            )
        resource = Resource.create(
            {"service.name": config.service_name, "service.version": __version__}
        )
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms)
        )
        self._tracer = self._provider.get_tracer("llmforge.gateway", __version__)
        self._pending: queue.Queue[Sequence[Trace] | None] = queue.Queue(MAX_PENDING_BATCHES)
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.exported = 0  # traces made into spans
        self.dropped = 0  # traces not exported: the queue of batches was full

    @classmethod
    def from_settings(cls, settings: Settings) -> OtelExporter | None:
        """The exporter the settings ask for, or None when no endpoint is configured."""
        config = settings.observability.otel
        if not config.endpoint:
            return None
        providers = {m.name: m.provider for m in settings.models}
        providers.update({e.name: e.provider for e in settings.embeddings})
        return cls(config, providers)

    def observe(self, batch: Sequence[Trace]) -> None:
        """The recorder's batch observer: queue the batch for the span thread; never waits."""
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="otel-spans", daemon=True)
                self._worker.start()
        try:
            self._pending.put_nowait(batch)
        except queue.Full:
            self.dropped += len(batch)

    def _work(self) -> None:
        while True:
            batch = self._pending.get()
            try:
                if batch is None:
                    return
                for trace in batch:
                    self._span(trace)
                self.exported += len(batch)
            finally:
                self._pending.task_done()

    def _span(self, trace: Trace) -> None:
        operation = OPERATIONS.get(trace.kind, trace.kind)
        end = int(trace.created_at * NS)
        start = end - int(trace.latency_ms * 1_000_000)
        span = self._tracer.start_span(
            f"{operation} {trace.model}",
            kind=SpanKind.CLIENT,
            start_time=start,
            attributes=self._attributes(trace, operation),
        )
        if trace.status == "error":
            span.set_status(Status(StatusCode.ERROR, (trace.error or "")[:500]))
        span.end(end_time=end)

    def _attributes(self, trace: Trace, operation: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": trace.model,
            "gen_ai.response.id": trace.id,
            "gen_ai.usage.input_tokens": trace.prompt_tokens,
            "gen_ai.usage.output_tokens": trace.completion_tokens,
            "gen_ai.request.stream": trace.stream,
            "llmforge.status": trace.status,
            "llmforge.latency_ms": round(trace.latency_ms, 3),
            "llmforge.cost_usd": trace.cost_usd or 0.0,
            "llmforge.retries": trace.retries or 0,
        }
        served = trace.served_by
        if served:
            attrs["gen_ai.response.model"] = served
        provider = self._providers.get(served or trace.model)
        if provider:
            attrs["gen_ai.provider.name"] = provider
        if trace.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = [trace.finish_reason]
        if trace.ttft_ms is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = trace.ttft_ms / 1000
            attrs["llmforge.ttft_ms"] = round(trace.ttft_ms, 3)
        sampling = trace.request.get("sampling") or {}
        for name, attribute in SAMPLING_ATTRIBUTES.items():
            value = sampling.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attrs[attribute] = value
        optional = {
            "llmforge.cache": trace.cache,
            "llmforge.deployment": trace.deployment,
            "llmforge.key_id": trace.key_id,
        }
        attrs.update({k: v for k, v in optional.items() if v})
        if trace.fallbacks:
            attrs["llmforge.fallbacks"] = list(trace.fallbacks)
        if trace.status == "error":
            attrs["error.type"] = "_OTHER"  # the trace keeps the message, not the error's class
        if self.config.capture_content:
            attrs.update(_content(trace))
        return attrs

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Make and send every span observed so far (blocking; for tests and shutdown)."""
        if self._worker is not None:
            self._pending.join()
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Make the spans observed so far, send them and stop both threads (blocking)."""
        if self._worker is not None:
            self._pending.put(None)
            self._worker.join(timeout=10)
        self._provider.shutdown()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.shutdown)


def _content(trace: Trace) -> dict[str, str]:
    """Prompt and answer as the GenAI conventions' structured messages (JSON strings)."""
    messages = trace.request.get("messages")
    if isinstance(messages, list):
        inputs = [
            {"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content") or ""}]}
            for m in messages
            if isinstance(m, dict)
        ]
    else:
        text = prompt_text(trace.kind, trace.request)
        inputs = [{"role": "user", "parts": [{"type": "text", "content": text}]}]
    output = [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": trace.output}],
            "finish_reason": trace.finish_reason or "",
        }
    ]
    return {
        "gen_ai.input.messages": json.dumps(inputs, ensure_ascii=False),
        "gen_ai.output.messages": json.dumps(output, ensure_ascii=False),
    }
