"""Routing: which deployment serves a call, and what happens when it fails.

For a call to model M the router walks the plan [M, *M.fallbacks]. For each model it picks the least
busy healthy deployment (replica); a failed attempt is retried with exponential back-off (honouring
the upstream's Retry-After when it is short enough), preferring another replica; when a model's
retries are spent or its failure is not worth retrying, the next model of the plan is tried. A
prompt too long for a model skips straight to the next one (context-window fallback).

Each deployment has a circuit breaker: after `circuit_failures` consecutive failures it is taken out
for `circuit_cooldown_s`, then one probe request is let through; success closes it again.

Streams are routed the same way up to their first delta: a stream that fails before producing
anything falls back like any other call; once a delta has been sent, a failure ends the stream with
an error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from llmforge.core.config import RouterConfig
from llmforge.core.errors import (
    ConfigError,
    ContextWindowExceededError,
    LLMForgeError,
    ModelError,
    OverloadedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from llmforge.core.types import Completion, Delta
from llmforge.gateway.call import Call
from llmforge.models import Deployment, ModelCatalog

T = TypeVar("T")
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
CircuitState = Literal["closed", "open", "half_open"]


@dataclass
class Circuit:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    def state(self, now: float, cooldown_s: float) -> CircuitState:
        if self.opened_at is None:
            return "closed"
        return "half_open" if now - self.opened_at >= cooldown_s else "open"


class Router:
    def __init__(self, catalog: ModelCatalog, config: RouterConfig) -> None:
        self.catalog = catalog
        self.config = config
        self._inflight: dict[str, int] = {}
        self._circuits: dict[str, Circuit] = {}

    # -- public ---------------------------------------------------------------------------------

    async def complete(self, call: Call) -> Completion:
        async def attempt(dep: Deployment) -> Completion:
            return await dep.backend.complete(call.messages, call.sampling)

        dep, completion = await self._route(call, attempt)
        self._release(dep)
        return completion

    async def stream(self, call: Call) -> AsyncGenerator[Delta, None]:
        async def attempt(dep: Deployment) -> tuple[AsyncGenerator[Delta, None], Delta]:
            deltas = dep.backend.stream(call.messages, call.sampling)
            try:
                return deltas, await anext(deltas)
            except BaseException:
                await deltas.aclose()
                raise

        dep, (deltas, first) = await self._route(call, attempt)
        try:
            yield first
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()
            self._release(dep)

    def circuit_states(self) -> dict[str, CircuitState]:
        now = time.monotonic()
        return {
            dep_id: c.state(now, self.config.circuit_cooldown_s)
            for dep_id, c in self._circuits.items()
        }

    def plan(self, model: str) -> list[str]:
        chain = [model, *self.catalog.config(model).fallbacks]
        return list(dict.fromkeys(chain))

    # -- the walk -------------------------------------------------------------------------------

    async def _route(
        self, call: Call, attempt: Callable[[Deployment], Awaitable[T]]
    ) -> tuple[Deployment, T]:
        last: LLMForgeError | None = None
        previous: str | None = None
        for model in self.plan(call.model):
            if previous is not None:
                call.fallbacks.append(previous)  # it failed: falling back from it
            previous = model
            config = self.catalog.config(model)
            if _too_long(call, config.context_length):
                last = ContextWindowExceededError(
                    f"The prompt is too long for model '{model}' "
                    f"(context_length {config.context_length}).",
                    param="messages",
                )
                continue
            retries = self.config.retries if config.retries is None else config.retries
            tried: set[str] = set()
            for n in range(retries + 1):
                dep = self._pick(model, avoid=tried)
                if dep is None:
                    last = last or OverloadedError(
                        f"every deployment of '{model}' is cooling down after failures"
                    )
                    break
                if n:
                    call.retries += 1
                tried.add(dep.id)
                self._acquire(dep)
                start = time.perf_counter()
                try:
                    result = await attempt(dep)
                except LLMForgeError as e:
                    call.upstream_s += time.perf_counter() - start
                    self._release(dep)
                    if not _deployment_failure(e):
                        raise  # the client's mistake: every model would refuse it
                    last = e
                    if isinstance(e, ContextWindowExceededError):
                        break  # no use retrying this model
                    self._failed(dep)
                    if not _retryable(e) or n == retries:
                        break
                    delay = self._delay(n, e)
                    if delay is None:
                        break  # upstream asks for a longer wait than we allow: fall back now
                    await asyncio.sleep(delay)
                    continue
                except BaseException:
                    call.upstream_s += time.perf_counter() - start
                    self._release(dep)
                    raise
                call.upstream_s += time.perf_counter() - start
                self._succeeded(dep)
                call.served_by, call.deployment = model, dep.id
                return dep, result
        assert last is not None
        raise last

    # -- deployments and circuits ---------------------------------------------------------------

    def _pick(self, model: str, avoid: set[str]) -> Deployment | None:
        now = time.monotonic()
        cooldown = self.config.circuit_cooldown_s
        usable = []
        for dep in self.catalog.deployments(model):
            circuit = self._circuits.get(dep.id)
            state = circuit.state(now, cooldown) if circuit else "closed"
            if state == "open" or (state == "half_open" and circuit and circuit.probing):
                continue
            usable.append(dep)
        if not usable:
            return None
        fresh = [d for d in usable if d.id not in avoid] or usable
        least = min(self._inflight.get(d.id, 0) for d in fresh)
        dep = random.choice([d for d in fresh if self._inflight.get(d.id, 0) == least])
        circuit = self._circuits.get(dep.id)
        if circuit and circuit.state(now, cooldown) == "half_open":
            circuit.probing = True
        return dep

    def _acquire(self, dep: Deployment) -> None:
        self._inflight[dep.id] = self._inflight.get(dep.id, 0) + 1

    def _release(self, dep: Deployment) -> None:
        self._inflight[dep.id] -= 1

    def _failed(self, dep: Deployment) -> None:
        circuit = self._circuits.setdefault(dep.id, Circuit())
        circuit.failures += 1
        circuit.probing = False
        if circuit.opened_at is not None or circuit.failures >= self.config.circuit_failures:
            circuit.opened_at = time.monotonic()

    def _succeeded(self, dep: Deployment) -> None:
        if dep.id in self._circuits:
            self._circuits[dep.id] = Circuit()

    def _delay(self, attempt: int, error: LLMForgeError) -> float | None:
        asked = getattr(error, "retry_after_s", None)
        if asked is not None:
            return asked if asked <= self.config.max_backoff_s else None
        base = self.config.backoff_s * (2**attempt)
        return min(base * random.uniform(0.8, 1.2), self.config.max_backoff_s)


def _deployment_failure(e: LLMForgeError) -> bool:
    """Whether another deployment or model might succeed where this one failed."""
    return isinstance(e, ModelError | OverloadedError | ConfigError | ContextWindowExceededError)


def _retryable(e: LLMForgeError) -> bool:
    if isinstance(e, UpstreamTimeoutError | OverloadedError):
        return True
    if isinstance(e, UpstreamError):
        return e.status_code is None or e.status_code in RETRY_STATUSES
    return False


def _too_long(call: Call, context_length: int | None) -> bool:
    """Cheap pre-check (about 4 characters a token); the backend's own check is the exact one."""
    if context_length is None:
        return False
    chars = sum(len(m.content) for m in call.messages)
    return chars / 4 > context_length
