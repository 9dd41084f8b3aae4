"""Who may call, how often, and how much they may spend: authentication, rate limits and budgets.

`KeyAdmission` is the gateway's `Admission` (see service.py) plus `authenticate(request)`:

- Authentication is on when `master_key` is set. A key comes as `Authorization: Bearer <key>` or
  `x-api-key: <key>`; none, unknown or revoked is a 401. The master key may call everything and
  has no limits. With no master key every request is anonymous and nothing below applies.
- Scope: a key limited to some models gets a 403 for any other.
- Requests per minute: `limits`' moving window, exact.
- Tokens per minute are reserved before the call and corrected after it. The reservation is an
  upper bound of the prompt (`prompt_token_bound`) plus max_tokens, added atomically to a per-key
  sliding-window counter and taken back at once if that puts the window over the limit, so
  concurrent requests can never jointly pass it. After the call the reservation is replaced by
  the tokens really used (reported usage, else an estimate from the text). `limits`' strategies
  cannot give tokens back, so the two windows are kept with its storage's atomic `incr`.
  Storage is in-process, or Redis when `redis_url` is set, so several gateway processes share it.
- Budgets: the worst-case cost (prompt bound x input price + max_tokens x output price, the
  dearest model of the fallback plan) is reserved in the database before the call by one
  conditional UPDATE (see keys.py) and settled to the actual cost after it, whether the call
  succeeded, failed or was cancelled; so spend never passes the budget, however many calls run at
  once. A key with a budget or TPM limit whose request gives no max_tokens gets the model's
  `max_output_tokens` (else 4096, or the context length if smaller) as its max_tokens, which keeps
  the bound without reserving a whole context window per call.

Admission and settlement run shielded from cancellation: a client that goes away mid-admission
still has what was taken given back. This module does not price calls (the gateway sets
`Call.cost_usd`) and does not store keys (keys.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import limits
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from llmforge.core.errors import (
    AuthenticationError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
)
from llmforge.core.settings import Settings
from llmforge.core.types import Message, Usage
from llmforge.gateway.call import Call, Caller, cost_usd
from llmforge.gateway.keys import KeyStore, to_nusd, to_usd
from llmforge.models import ModelCatalog

log = logging.getLogger(__name__)
T = TypeVar("T")

PER_MESSAGE_TOKENS = 16  # role markers and separators a chat template adds around each message
PER_REQUEST_TOKENS = 128  # a template's own default system prompt and generation prompt
DEFAULT_OUTPUT_CAP = 4096  # max_tokens for budgeted calls when neither request nor model says
WINDOW_S = 60
STALE_RESERVATION_S = 24 * 3600  # reservations older than this were left by a dead process
MASTER = Caller(key_id="master", name="master", master=True)


def prompt_token_bound(messages: Sequence[Message] = (), inputs: Sequence[str] = ()) -> int:
    """An upper bound of the prompt's tokens: every token covers at least one UTF-8 byte, plus an
    allowance for what a chat template adds."""
    if inputs:
        return sum(len(t.encode()) + PER_MESSAGE_TOKENS for t in inputs)
    return PER_REQUEST_TOKENS + sum(
        len(m.content.encode()) + len((m.name or "").encode()) + PER_MESSAGE_TOKENS
        for m in messages
    )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries: `Authorization: Bearer <key>`, else `x-api-key`."""
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key", "").strip() or None


@dataclass(frozen=True)
class TokenHold:
    """Tokens taken from one key's per-minute window, to be corrected after the call."""

    counter: str
    tokens: int


@dataclass
class Reservation:
    """What admission took for a call (`Call.reservation`), given back by `settle`."""

    key_id: str
    budget_id: str | None = None  # the ledger's reservation, when the key has a budget
    worst_nusd: int = 0
    tokens: TokenHold | None = None


class RateLimits:
    """Per-key requests and tokens per minute over a `limits` async storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._requests = MovingWindowRateLimiter(storage)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        """In-process storage, or Redis when `redis_url` is set (shared across processes)."""
        if not settings.redis_url:
            return cls(MemoryStorage())
        url = settings.redis_url
        uri = "async+redis+" + url if url.startswith("unix://") else "async+" + url
        return cls(
            RedisStorage(uri, wrap_exceptions=True, implementation="redispy", key_prefix="llmforge")
        )

    async def hit_request(self, key_id: str, rpm: int, name: str) -> None:
        item = limits.RateLimitItemPerMinute(rpm)
        if await self._requests.hit(item, key_id):
            return
        stats = await self._requests.get_window_stats(item, key_id)
        raise RateLimitError(
            f"Key '{name}' is limited to {rpm} requests per minute; retry after the Retry-After "
            "seconds or ask for a higher --rpm.",
            retry_after_s=max(stats.reset_time - time.time(), 1.0),
        )

    async def reserve_tokens(self, key_id: str, tpm: int, tokens: int, name: str) -> TokenHold:
        if tokens > tpm:
            raise RateLimitError(
                f"This request may use up to {tokens} tokens (prompt + max_tokens), more than key "
                f"'{name}' may use in a minute ({tpm}). Lower max_tokens or shorten the prompt.",
                retry_after_s=WINDOW_S,
            )
        now = time.time()
        window = int(now // WINDOW_S)
        current, previous = _counter(key_id, window), _counter(key_id, window - 1)
        weight = 1 - (now - window * WINDOW_S) / WINDOW_S
        before = await self.storage.get(previous)
        count = await self.storage.incr(current, 2 * WINDOW_S, tokens)
        if before * weight + count <= tpm:
            return TokenHold(current, tokens)
        await self.storage.incr(current, 2 * WINDOW_S, -tokens)
        raise RateLimitError(
            f"Key '{name}' is limited to {tpm} tokens per minute and this request may use "
            f"{tokens}; retry after the Retry-After seconds, lower max_tokens or ask for a higher "
            "--tpm.",
            retry_after_s=_tokens_free_in(now, window, before, count - tokens, tokens, tpm),
        )

    async def correct(self, hold: TokenHold, used: int) -> None:
        """Replace the held tokens by those used (in the window they were taken from)."""
        if used != hold.tokens:
            await self.storage.incr(hold.counter, 2 * WINDOW_S, used - hold.tokens)

    async def aclose(self) -> None:
        bridge = getattr(self.storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()


def _counter(key_id: str, window: int) -> str:
    return f"tpm/{key_id}/{window}"


def _tokens_free_in(
    now: float, window: int, previous: int, current: int, tokens: int, tpm: int
) -> float:
    """Seconds until `tokens` more fit: the previous window's weight falls linearly to 0."""
    start = window * WINDOW_S
    room = tpm - current - tokens
    if room >= 0 and previous > 0:  # fits in this window once enough of the previous fades
        return max(start + WINDOW_S * (1 - room / previous) - now, 1.0)
    # only once this window is the previous one, faded enough
    fade = 1 - (tpm - tokens) / current if current > 0 else 0.0
    return max(start + WINDOW_S + WINDOW_S * fade - now, 1.0)


class KeyAdmission:
    """API keys, rate limits and budgets for the gateway (see the module docstring)."""

    def __init__(
        self,
        store: KeyStore,
        rate_limits: RateLimits,
        catalog: ModelCatalog,
        *,
        master_key: str | None,
        plan: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.store = store
        self.rate_limits = rate_limits
        self.catalog = catalog
        self.master_key = master_key or None
        self.plan = plan or (lambda model: [model, *catalog.config(model).fallbacks])
        self._background: set[asyncio.Future[Any]] = set()
        self._writer: ThreadPoolExecutor | None = None  # made on first use, see `_write`

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: KeyStore,
        catalog: ModelCatalog,
        plan: Callable[[str], list[str]] | None = None,
    ) -> KeyAdmission:
        master = settings.master_key.get_secret_value() if settings.master_key else None
        return cls(store, RateLimits.from_settings(settings), catalog, master_key=master, plan=plan)

    async def start(self) -> None:
        released = await self._write(self.store.release_stale, STALE_RESERVATION_S)
        if released:
            log.warning("released %d budget reservation(s) left by a stopped process", released)

    async def aclose(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.rate_limits.aclose()
        if self._writer is not None:
            self._writer.shutdown(wait=False)
            self._writer = None

    # -- authentication -------------------------------------------------------------------------

    async def authenticate(self, request: Request) -> Caller | None:
        """The caller, None when authentication is off; AuthenticationError when it is on and the
        request has no valid key."""
        if self.master_key is None:
            return None
        secret = presented_key(request.headers)
        if secret is None:
            raise AuthenticationError(
                "Missing API key. Send it as `Authorization: Bearer <key>` (or `x-api-key: "
                "<key>`); create keys with `llmforge keys create`."
            )
        if hmac.compare_digest(secret.encode(), self.master_key.encode()):
            return MASTER
        key = await asyncio.to_thread(self.store.lookup, secret)
        if key is None:
            raise AuthenticationError(
                f"Invalid API key '{secret[:8]}...': it is unknown or was revoked. "
                "See `llmforge keys list`."
            )
        return Caller(
            key_id=key.id,
            name=key.name,
            models=tuple(key.models) if key.models else None,
            rpm=key.rpm,
            tpm=key.tpm,
            budget_usd=key.budget_usd,
        )

    async def require_master(self, request: Request) -> None:
        if self.master_key is None:
            raise PermissionDeniedError(
                "The admin API is off: set LLMFORGE_MASTER_KEY (or `master_key`) and send it as "
                "`Authorization: Bearer <master key>`."
            )
        caller = await self.authenticate(request)
        if caller is None or not caller.master:
            raise PermissionDeniedError("Only the master key may manage API keys.")

    # -- admission ------------------------------------------------------------------------------

    async def admit(self, call: Call) -> None:
        caller = call.caller
        if caller is None or caller.master:
            return
        if caller.models is not None and call.model not in caller.models:
            raise PermissionDeniedError(
                f"Key '{caller.name}' may not use model '{call.model}'; it may use "
                f"{', '.join(caller.models)}. Create a key whose --models include it.",
                param="model",
            )
        await self._shielded(self._admit(call, caller), on_cancel=lambda: self._settle_soon(call))

    async def settle(self, call: Call) -> None:
        reservation = call.reservation
        if not isinstance(reservation, Reservation):
            return  # not admitted here (anonymous, master, or refused)
        call.reservation = None
        await self._shielded(self._settle(call, reservation))

    async def _admit(self, call: Call, caller: Caller) -> None:
        if caller.rpm is not None:
            await self._limits(self.rate_limits.hit_request(caller.key_id, caller.rpm, caller.name))
        reservation = Reservation(caller.key_id)
        bounded = caller.tpm is not None or caller.budget_usd is not None
        if bounded and call.kind == "chat" and call.sampling.max_tokens is None:
            call.sampling = call.sampling.model_copy(
                update={"max_tokens": self.output_cap(call.model)}
            )
        if caller.tpm is not None:
            tokens = self.token_bound(call)
            reservation.tokens = await self._limits(
                self.rate_limits.reserve_tokens(caller.key_id, caller.tpm, tokens, caller.name)
            )
        try:
            if caller.budget_usd is not None:
                reservation.worst_nusd = self.worst_case_nusd(call)
                reservation.budget_id = await self._write(
                    self.store.reserve, caller.key_id, reservation.worst_nusd
                )
        except BaseException:
            if reservation.tokens is not None:
                await self._limits(self.rate_limits.correct(reservation.tokens, 0))
            raise
        call.reservation = reservation

    async def _settle(self, call: Call, reservation: Reservation) -> None:
        charged = self._charge(call, reservation)
        try:
            if reservation.budget_id is not None or charged:
                await self._write(
                    self.store.settle, reservation.budget_id, reservation.key_id, charged
                )
        except SQLAlchemyError:  # the reservation stays; `release_stale` frees it later
            log.exception("could not settle call %s of key %s", call.id, reservation.key_id)
        if reservation.tokens is not None:
            try:
                await self._limits(
                    self.rate_limits.correct(reservation.tokens, self._tokens_used(call))
                )
            except OverloadedError:
                log.exception("could not correct the token count of call %s", call.id)

    # -- bounds and charges ---------------------------------------------------------------------

    def output_cap(self, model: str) -> int:
        config = self.catalog.config(model)
        return config.max_output_tokens or min(
            DEFAULT_OUTPUT_CAP, config.context_length or DEFAULT_OUTPUT_CAP
        )

    def token_bound(self, call: Call) -> int:
        if call.kind == "embedding":
            return prompt_token_bound(inputs=call.inputs)
        return prompt_token_bound(call.messages) + (call.sampling.max_tokens or 0)

    def worst_case_nusd(self, call: Call) -> int:
        """The most the call can cost: the prompt bound and max_tokens, on the dearest model the
        router may serve it with. Embedding models have no price."""
        if call.kind == "embedding":
            return 0
        prompt = prompt_token_bound(call.messages)
        output = call.sampling.max_tokens or 0
        costs = [
            (prompt * p.input_per_mtok + output * p.output_per_mtok) / 1_000_000
            for p in (self.catalog.config(m).price for m in self.plan(call.model))
        ]
        return to_nusd(max(costs), up=True)

    def _charge(self, call: Call, reservation: Reservation) -> int:
        """What the call costs the key, in nano-dollars. A call that produced text without
        reporting usage (a stream the client left) is charged an estimate (4 bytes a token), at
        most its reservation, and `call.cost_usd` says so."""
        unreported = not call.usage.total_tokens and call.cache not in ("hit", "semantic_hit")
        if call.kind == "chat" and unreported and call.output and call.served_by:
            price = self.catalog.config(call.served_by).price
            estimate = cost_usd(price, _estimated_usage(call))
            nusd = to_nusd(estimate)
            if reservation.budget_id is not None:
                nusd = min(nusd, reservation.worst_nusd)
            call.cost_usd = to_usd(nusd) or 0.0
            return nusd
        return to_nusd(call.cost_usd)

    def _tokens_used(self, call: Call) -> int:
        if call.usage.total_tokens:
            return call.usage.total_tokens
        if call.output and call.cache not in ("hit", "semantic_hit"):  # a hit used no model
            return _estimated_usage(call).total_tokens
        return 0

    # -- helpers --------------------------------------------------------------------------------

    async def _limits(self, op: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await op
        except StorageError as e:
            raise OverloadedError(
                f"The rate-limit store (redis_url) cannot be reached: "
                f"{str(e.storage_error).rstrip('.')}. "
                "Check that Redis is running.",
                retry_after_s=5,
            ) from None

    async def _shielded(
        self, op: Coroutine[Any, Any, None], on_cancel: Callable[[], None] | None = None
    ) -> None:
        """Run `op` to the end even if our caller is cancelled; `on_cancel` runs after it
        succeeded for a caller that is gone."""
        task = asyncio.ensure_future(op)
        self._keep(task)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if on_cancel is not None:

                def done(t: asyncio.Task[None]) -> None:
                    if not t.cancelled() and t.exception() is None:
                        on_cancel()

                task.add_done_callback(done)
            raise

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a ledger write on the one writer thread: in one process, writers queue here
        instead of waiting on SQLite's lock with back-off."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="llmforge-ledger")
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    def _settle_soon(self, call: Call) -> None:
        self._keep(asyncio.ensure_future(self.settle(call)))

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _estimated_usage(call: Call) -> Usage:
    prompt = sum(len(m.content.encode()) for m in call.messages)
    return Usage(
        prompt_tokens=math.ceil(prompt / 4), completion_tokens=math.ceil(len(call.output) / 4) + 1
    )
