"""Prometheus metrics of one gateway app, served at `GET /metrics`.

`GatewayMetrics` owns a `CollectorRegistry` of its own (never the process-global one, so several
apps in one process, as in tests, do not clash). It is a `CallObserver`: the gateway hands it every
finished call and it counts requests, latency, time to first token, tokens, cost, cache lookups,
retries, fallbacks, errors and the gateway's own overhead. Circuit-breaker states and local models'
queues (depth, busy slots, waiting time) are read from the router and catalog at scrape time;
requests in flight are counted by `InFlightMiddleware` around the HTTP API.

Label values are only model names, deployment ids, key ids, error class names and small fixed sets
(status, kind, cache result), never request ids or free text, so the number of series is bounded by
the configuration. Calls that fail before they are admitted as a call (malformed JSON, unknown
model) are 4xx responses that are not counted here.

Deliberately not here: pushing to a gateway, OpenTelemetry export, and per-key request counters
(the trace table answers per-key questions; only cost is labelled by key).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from llmforge.gateway.call import Call
from llmforge.gateway.router import Router
from llmforge.models.local_queue import WAIT_BUCKETS, QueueReporter
from llmforge.traces import TraceRecorder

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class GatewayMetrics:
    """The metric families of one app, and the observer that fills them."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, router: Router | None = None, recorder: TraceRecorder | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmforge_requests",
            "Calls finished, by requested model, model that served it, status and kind.",
            ["model", "served_by", "status", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "llmforge_request_duration_seconds",
            "Time from the call's start to its end (a stream's last chunk).",
            ["model", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llmforge_time_to_first_token_seconds",
            "Streams: time from the call's start to the first piece of text.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "llmforge_gateway_overhead_seconds",
            "The gateway's own time (not waiting on models); streams: up to the first token.",
            ["kind"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "llmforge_prompt_tokens",
            "Prompt tokens processed, by the model that served them.",
            ["model"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "llmforge_completion_tokens",
            "Completion tokens generated, by the model that served them.",
            ["model"],
            registry=r,
        )
        self.cost = Counter(
            "llmforge_cost_usd",
            "Spend in USD, by the model that served and the caller's key id ('' without keys).",
            ["model", "key"],
            registry=r,
        )
        self.cache = Counter(
            "llmforge_cache_lookups",
            "Response cache lookups by result: hit, semantic_hit or miss.",
            ["model", "result"],
            registry=r,
        )
        self.retries = Counter(
            "llmforge_retries", "Retried upstream attempts.", ["model"], registry=r
        )
        self.fallbacks = Counter(
            "llmforge_fallbacks",
            "Fallbacks away from a failing model (from_model) for calls to `model`.",
            ["model", "from_model"],
            registry=r,
        )
        self.errors = Counter(
            "llmforge_errors",
            "Failed calls by error class (e.g. UpstreamTimeoutError).",
            ["model", "type"],
            registry=r,
        )
        self.in_flight = Gauge(
            "llmforge_requests_in_flight",
            "HTTP API requests being served now (streams until their last chunk).",
            registry=r,
        )
        if router is not None:
            r.register(CircuitCollector(router))
            r.register(LocalQueueCollector(router))
        if recorder is not None:
            r.register(TraceCollector(recorder))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def finished(self, call: Call) -> None:
        """Count one finished call (the `CallObserver` hook)."""
        served = call.served_by or ""
        child = self._child
        child(self.requests, call.model, served, call.status, call.kind).inc()
        child(self.latency, call.model, call.kind).observe(call.elapsed_s())
        if call.stream and call.ttft_s is not None:
            child(self.ttft, call.model).observe(call.ttft_s)
        child(self.overhead, call.kind).observe(_overhead_s(call))
        if call.served_by is not None:
            child(self.prompt_tokens, served).inc(call.usage.prompt_tokens)
            child(self.completion_tokens, served).inc(call.usage.completion_tokens)
            key = call.caller.key_id if call.caller else ""
            child(self.cost, served, key).inc(call.cost_usd)
        if call.cache != "off":
            child(self.cache, call.model, call.cache).inc()
        if call.retries:
            child(self.retries, call.model).inc(call.retries)
        for failed in call.fallbacks:
            child(self.fallbacks, call.model, failed).inc()
        if call.status == "error":
            child(self.errors, call.model, call.error_type or "unknown").inc()

    def _child(self, family: Any, *labels: str) -> Any:
        """`family.labels(*labels)`, looked up once per label set (labels() costs as much as the
        rest of counting a call; label sets are bounded by the configuration, see above)."""
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def render(self) -> bytes:
        """The Prometheus text exposition of every family."""
        return generate_latest(self.registry)


def _overhead_s(call: Call) -> float:
    """The gateway's own time. For a stream, the part before its first token (what the
    `x-llmforge-overhead-ms` header reports when the headers go out): the router counts upstream
    time only up to a stream's first delta."""
    if call.stream and call.ttft_s is not None:
        return max(call.ttft_s - call.upstream_s, 0.0)
    return call.overhead_ms() / 1000


class CircuitCollector(Collector):
    """`llmforge_circuit_state{deployment}`: 0 closed, 1 half_open, 2 open, read at scrape time.
    Lists the deployments that have failed at least once since start; absent ones are closed."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for deployment, state in sorted(self.router.circuit_states().items()):
            family.add_metric([deployment], CIRCUIT_VALUES[state])
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "llmforge_circuit_state",
            "Circuit breaker per deployment: 0 closed, 1 half_open, 2 open.",
            labels=["deployment"],
        )


class LocalQueueCollector(Collector):
    """The line in front of each local model deployment (`QueueReporter`), read at scrape time:
    `llmforge_local_queue_depth` (calls waiting for a slot), `llmforge_local_slots_busy` and
    `llmforge_local_slots`, `llmforge_local_queue_wait_seconds` (time from arrival to a slot, of
    every call that got one) and `llmforge_local_queue_refused` (turned away: queue full)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> Iterator[Metric]:
        labels = ["deployment"]
        depth = GaugeMetricFamily(
            "llmforge_local_queue_depth", "Calls waiting for a local model's slot.", labels=labels
        )
        busy = GaugeMetricFamily(
            "llmforge_local_slots_busy", "Local model slots decoding a call now.", labels=labels
        )
        slots = GaugeMetricFamily(
            "llmforge_local_slots", "Calls a local model decodes at once.", labels=labels
        )
        wait = HistogramMetricFamily(
            "llmforge_local_queue_wait_seconds",
            "Time calls waited for a local model's slot.",
            labels=labels,
        )
        refused = CounterMetricFamily(
            "llmforge_local_queue_refused",
            "Calls refused because a local model's queue was full.",
            labels=labels,
        )
        catalog = self.router.catalog
        for info in catalog.infos():
            if info.kind != "chat":
                continue
            for dep in catalog.deployments(info.name):
                if not isinstance(dep.backend, QueueReporter):
                    continue
                stats = dep.backend.queue_stats()
                depth.add_metric([dep.id], stats.waiting)
                busy.add_metric([dep.id], stats.running)
                slots.add_metric([dep.id], stats.slots)
                refused.add_metric([dep.id], stats.refused)
                running_total, buckets = 0, []
                bounds = (*WAIT_BUCKETS, float("inf"))
                for bound, count in zip(bounds, stats.wait_counts, strict=True):
                    running_total += count
                    buckets.append((_bucket_label(bound), running_total))
                wait.add_metric([dep.id], buckets, stats.wait_sum_s)
        yield from (depth, busy, slots, wait, refused)


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class TraceCollector(Collector):
    """`llmforge_traces_written` and `llmforge_traces_lost{reason}` (overflow: the queue was
    full; unwritable: the database refused the row; abandoned: unwritten at shutdown), read from
    the recorder at scrape time. A lost trace is a call nobody can audit: alert on any."""

    def __init__(self, recorder: TraceRecorder) -> None:
        self.recorder = recorder

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> Iterator[Metric]:
        stats = self.recorder.stats
        written = CounterMetricFamily("llmforge_traces_written", "Traces stored.")
        written.add_metric([], stats.written)
        yield written
        lost = CounterMetricFamily(
            "llmforge_traces_lost", "Traces not stored, by why.", labels=["reason"]
        )
        for reason in ("overflow", "unwritable", "abandoned"):
            lost.add_metric([reason], getattr(stats, reason))
        yield lost


class InFlightMiddleware:
    """Keeps `gauge` at the number of HTTP requests under `prefix` being served (a stream counts
    until its last chunk is sent or the client goes away)."""

    def __init__(self, app: ASGIApp, gauge: Gauge, prefix: str = "/v1/") -> None:
        self.app = app
        self.gauge = gauge
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        self.gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gauge.dec()


__all__ = [
    "CircuitCollector",
    "GatewayMetrics",
    "InFlightMiddleware",
    "LocalQueueCollector",
    "TraceCollector",
]
