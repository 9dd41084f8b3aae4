"""Routing: which deployment serves a call, and what happens when it fails.

For a call to model M the router walks the plan [M, *M.fallbacks]. For each model it picks a
deployment (replica): one that is ready before one that asked us to wait, one not yet tried by this
call before one that failed it, then the least busy (ties at random). A failed attempt is retried
with exponential back-off, preferring another replica; when a model's retries are spent or its
failure is not worth retrying, the next model of the plan is tried. A prompt too long for a model
skips straight to the next one (context-window fallback), whether the router's cheap pre-check or
the backend says so. A client's mistake (an `InvalidRequestError`, or an upstream answering
400/413/422) is raised at once: not retried, not fallen back from, not held against the deployment.

An upstream's `Retry-After` rests that deployment for as long as it asked, for every call: another
replica is used at once; if none is ready the router waits, up to `max_backoff_s`, and past that
falls back to the next model.

Each deployment has a circuit breaker: after `circuit_failures` consecutive failures it is taken out
for `circuit_cooldown_s`, then one probe call is let through; its success closes the circuit, its
failure opens it for another cooldown. Only signs that the deployment is broken count: not a
client's mistake, a context window too small, an overloaded deployment (`OverloadedError`: it rests
for its Retry-After instead) or a client that went away.

Streams are routed the same way up to their first delta: a stream that fails before producing
anything falls back like any other call; once a delta has been sent, a failure ends the stream with
an error (and counts against the deployment). The router does not time calls itself: each
backend enforces its model's `timeout_s`, and a timeout is retried like any other upstream failure.

A `CallPolicy` (optional; the distillation flywheel's canary is one) may serve a chat call its own
way: it is handed the call's model, messages and sampling and a `serve(model, sampling)` that routes
to any model as above, and answers, or returns None to leave the call to the router. The router
knows nothing of what the policy decides.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from llmforge.core.config import RouterConfig
from llmforge.core.errors import (
    ConfigError,
    ContextWindowExceededError,
    InvalidRequestError,
    LLMForgeError,
    ModelError,
    OverloadedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from llmforge.core.types import Completion, Delta, Message, Sampling, ToolCallDelta
from llmforge.gateway.call import Call
from llmforge.models import Deployment, ModelCatalog, TextModel, collect

T = TypeVar("T")
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504, 529}  # 529: Anthropic "overloaded"
CircuitState = Literal["closed", "open", "half_open"]
Serve = Callable[[str, Sampling], Awaitable[Completion]]
"""Route the call's messages to the model named, with this sampling (retries, fallbacks)."""


class CallPolicy(Protocol):
    """Serves some chat calls its own way (e.g. a share to a distilled student, escalated to the
    model asked for when the student is unsure)."""

    async def complete(
        self,
        model: str,
        messages: Sequence[Message],
        sampling: Sampling,
        serve: Serve,
        *,
        stream: bool,
        tags: dict[str, str],
    ) -> Completion | None:
        """The answer, or None to leave the call to the router. `tags` are the call's traced
        metadata, which the policy may add to; `stream`: the client reads a stream (the answer
        is then sent whole, as one piece)."""
        ...


@dataclass
class Circuit:
    """One deployment's health: consecutive failures, when its circuit opened, whether a probe is
    out, and until when the upstream asked to be left alone (Retry-After)."""

    failures: int = 0
    opened_at: float | None = None
    probing: bool = False
    resting_until: float = 0.0

    def state(self, now: float, cooldown_s: float) -> CircuitState:
        if self.opened_at is None:
            return "closed"
        return "half_open" if now - self.opened_at >= cooldown_s else "open"

    def admits(self, now: float, cooldown_s: float) -> bool:
        state = self.state(now, cooldown_s)
        return state == "closed" or (state == "half_open" and not self.probing)


class Router:
    def __init__(
        self, catalog: ModelCatalog, config: RouterConfig, policy: CallPolicy | None = None
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.policy = policy
        self._inflight: dict[str, int] = {}
        self._circuits: dict[str, Circuit] = {}

    # -- public ---------------------------------------------------------------------------------

    async def complete(self, call: Call) -> Completion:
        steered = await self._steer(call)
        if steered is not None:
            return steered

        async def attempt(dep: Deployment) -> Completion:
            if call.kind == "text":
                return await collect(_text_stream(dep, call))
            return await dep.backend.complete(call.messages, call.sampling)

        dep, completion = await self._route(call, attempt)
        self._settle(dep, None)
        return completion

    async def stream(self, call: Call) -> AsyncGenerator[Delta, None]:
        steered = await self._steer(call)
        if steered is not None:
            for delta in _whole(steered):
                yield delta
            return

        async def attempt(dep: Deployment) -> tuple[AsyncGenerator[Delta, None], Delta]:
            deltas = (
                _text_stream(dep, call)
                if call.kind == "text"
                else dep.backend.stream(call.messages, call.sampling)
            )
            try:
                return deltas, await anext(deltas)
            except BaseException:
                await deltas.aclose()
                raise

        dep, (deltas, first) = await self._route(call, attempt)
        finished = first.finish_reason is not None
        ended: BaseException | None = None
        try:
            yield first
            async for delta in deltas:
                finished = delta.finish_reason is not None
                yield delta
        except BaseException as e:
            ended = e
            raise
        finally:
            try:
                await deltas.aclose()  # may be cancelled again (the client went away)
            finally:
                # a stream closed after its last delta (the usual way consumers stop) succeeded
                self._settle(dep, None if finished else ended)

    def circuit_states(self) -> dict[str, CircuitState]:
        """Every deployment that has failed at least once since start, and its circuit's state."""
        now = time.monotonic()
        return {
            dep_id: c.state(now, self.config.circuit_cooldown_s)
            for dep_id, c in self._circuits.items()
        }

    def plan(self, model: str) -> list[str]:
        chain = [model, *self.catalog.config(model).fallbacks]
        return list(dict.fromkeys(chain))

    # -- the policy -----------------------------------------------------------------------------

    async def _steer(self, call: Call) -> Completion | None:
        if self.policy is None or call.kind != "chat":
            return None

        async def serve(model: str, sampling: Sampling) -> Completion:
            async def attempt(dep: Deployment) -> Completion:
                return await dep.backend.complete(call.messages, sampling)

            dep, completion = await self._route(call, attempt, model)
            self._settle(dep, None)
            return completion

        return await self.policy.complete(
            call.model, call.messages, call.sampling, serve, stream=call.stream, tags=call.metadata
        )

    # -- the walk -------------------------------------------------------------------------------

    async def _route(
        self, call: Call, attempt: Callable[[Deployment], Awaitable[T]], model: str | None = None
    ) -> tuple[Deployment, T]:
        """The first success along the plan of `model` (default: the call's), its deployment still
        acquired (see `_settle`); or the last model's error."""
        plan = self.plan(model or call.model)
        error: LLMForgeError | None = None
        for i, model in enumerate(plan):
            if i:
                call.fallbacks.append(plan[i - 1])  # it failed: falling back from it
            outcome = await self._serve(call, model, attempt)
            if not isinstance(outcome, LLMForgeError):
                call.served_by, call.deployment = model, outcome[0].id
                return outcome
            error = outcome
        assert error is not None  # the plan is never empty
        raise error

    async def _serve(
        self, call: Call, model: str, attempt: Callable[[Deployment], Awaitable[T]]
    ) -> tuple[Deployment, T] | LLMForgeError:
        """One model's attempts: a success, or the error to fall back from. A client's mistake
        is raised: every model would refuse it."""
        config = self.catalog.config(model)
        if _too_long(call, config.context_length):
            return ContextWindowExceededError(
                f"The prompt is too long for model '{model}' "
                f"(context_length {config.context_length}); shorten it or configure a fallback "
                "with a larger context.",
                param="messages",
            )
        retries = self.config.retries if config.retries is None else config.retries
        tried: set[str] = set()
        error: LLMForgeError | None = None
        delay = 0.0
        for n in range(retries + 1):
            picked = self._pick(model, avoid=tried)
            if isinstance(picked, LLMForgeError):
                return error or picked
            dep, wait = picked
            if n:
                call.retries += 1
            tried.add(dep.id)
            self._acquire(dep)  # before any pause: the pick must count for concurrent calls
            try:
                result = await self._attempt(call, dep, max(delay, wait), attempt)
            except BaseException as e:
                self._settle(dep, e)
                if not isinstance(e, LLMForgeError) or not _deployment_failure(e):
                    raise  # cancelled, a bug, or the client's mistake
                error = e
                if not _retryable(e):
                    return e
                delay = self._backoff(n)
                continue
            return dep, result
        assert error is not None
        return error

    async def _attempt(
        self,
        call: Call,
        dep: Deployment,
        pause: float,
        attempt: Callable[[Deployment], Awaitable[T]],
    ) -> T:
        if pause > 0:
            await asyncio.sleep(pause)
        start = time.perf_counter()
        try:
            return await attempt(dep)
        finally:
            call.upstream_s += time.perf_counter() - start

    # -- deployments and circuits ---------------------------------------------------------------

    def _pick(self, model: str, avoid: set[str]) -> tuple[Deployment, float] | OverloadedError:
        """The deployment to try next and how long it asked us to wait first; or why none can be
        tried now."""
        now = time.monotonic()
        cooldown = self.config.circuit_cooldown_s
        ranked: list[tuple[tuple[float, bool, int], Deployment]] = []
        reopens = []
        for dep in self.catalog.deployments(model):
            circuit = self._circuits.get(dep.id) or Circuit()
            if not circuit.admits(now, cooldown):
                if circuit.opened_at is not None:
                    reopens.append(circuit.opened_at + cooldown - now)
                continue
            wait = max(circuit.resting_until - now, 0.0)
            ranked.append(((wait, dep.id in avoid, self._inflight.get(dep.id, 0)), dep))
        if not ranked:
            retry_in = max(min(reopens, default=cooldown), 0.0)
            return OverloadedError(
                f"Every deployment of '{model}' is out after repeated failures (circuit open); "
                f"retry in {retry_in:.1f}s or configure `fallbacks` for it.",
                retry_after_s=retry_in,
            )
        best = min(rank for rank, _ in ranked)
        wait = best[0]
        if wait > self.config.max_backoff_s:
            return OverloadedError(
                f"Every deployment of '{model}' asked to be left alone for {wait:.1f}s more "
                "(Retry-After), longer than router.max_backoff_s; retry later or configure "
                "`fallbacks` for it.",
                retry_after_s=wait,
            )
        return random.choice([dep for rank, dep in ranked if rank == best]), wait

    def _acquire(self, dep: Deployment) -> None:
        self._inflight[dep.id] = self._inflight.get(dep.id, 0) + 1
        circuit = self._circuits.get(dep.id)
        if circuit is not None and circuit.opened_at is not None:
            circuit.probing = True  # half-open: this call is the probe

    def _settle(self, dep: Deployment, error: BaseException | None) -> None:
        """An acquired attempt is over: success (None), the deployment's failure, or neither."""
        self._inflight[dep.id] -= 1
        circuit = self._circuits.get(dep.id)
        if error is None:
            if circuit is not None:
                self._circuits[dep.id] = Circuit(resting_until=circuit.resting_until)
            return
        if not (isinstance(error, LLMForgeError) and _counts_against(error)):
            if circuit is not None:
                circuit.probing = False  # a probe that proved nothing: let another one through
            return
        now = time.monotonic()
        circuit = self._circuits.setdefault(dep.id, Circuit())
        circuit.failures += 1
        circuit.probing = False
        if circuit.opened_at is not None or circuit.failures >= self.config.circuit_failures:
            circuit.opened_at = now
        asked = getattr(error, "retry_after_s", None)
        if asked is not None:
            circuit.resting_until = max(circuit.resting_until, now + asked)

    def _backoff(self, attempt: int) -> float:
        base = self.config.backoff_s * (2**attempt)
        return min(base * random.uniform(0.8, 1.2), self.config.max_backoff_s)


def _whole(answer: Completion) -> list[Delta]:
    """A policy's whole answer as stream pieces: its text, its tool calls, then the finish."""
    calls = [
        Delta(tool_calls=(ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments),))
        for i, c in enumerate(answer.tool_calls)
    ]
    text = [Delta(text=answer.text, logprobs=answer.logprobs)] if answer.text else []
    return [*text, *calls, Delta(finish_reason=answer.finish_reason, usage=answer.usage)]


def _text_stream(dep: Deployment, call: Call) -> AsyncGenerator[Delta, None]:
    """A legacy text completion on a backend that continues raw text (`TextModel`)."""
    if not isinstance(dep.backend, TextModel):
        raise InvalidRequestError(
            f"Model '{dep.model}' does not do text completion; use /v1/chat/completions, or a "
            "llamacpp or OpenAI-compatible model.",
            param="model",
        )
    return dep.backend.stream_text(call.prompt, call.sampling)


def _deployment_failure(e: LLMForgeError) -> bool:
    """Whether another deployment or model might succeed where this one failed."""
    if isinstance(e, ContextWindowExceededError):
        return True
    if e.http_status == 400:
        return False  # the upstream found the request itself invalid
    return isinstance(e, ModelError | OverloadedError | ConfigError)


def _counts_against(e: LLMForgeError) -> bool:
    """Whether the failure says the deployment is broken (for its circuit). A busy one
    (`OverloadedError`) is not: it rests for its Retry-After instead."""
    return _deployment_failure(e) and not isinstance(
        e, ContextWindowExceededError | OverloadedError
    )


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
