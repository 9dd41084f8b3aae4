"""Who may call, how often, and how much they may spend: authentication, rate limits and budgets.

`KeyAdmission` is the gateway's `Admission` (see service.py) plus `authenticate(request)`:

- Authentication is on when `master_key` is set. A key comes as `Authorization: Bearer <key>` or
  `x-api-key: <key>`; none, unknown or revoked is a 401. The master key may call everything and
  has no limits. With no master key every request is anonymous and nothing below applies.
- Scope: a key limited to some models gets a 403 for any other.
- Requests per minute: `limits`' moving window, exact.
- Tokens per minute are reserved before the call and corrected after it. The reservation is the
  prompt's tokens (counted or bounded as for budgets, below) plus max_tokens x n, added
  atomically to a per-key sliding-window counter and taken back at once if that puts the window
  over the limit, so concurrent requests can never jointly pass it. After the call the
  reservation is replaced by the tokens really used (reported usage, else an estimate from the
  text). `limits`' strategies cannot give tokens back, so the two windows are kept with its
  storage's atomic `incr`.
  Storage is in-process, or Redis when `redis_url` is set, so several gateway processes share it.
- Budgets: the worst-case cost is reserved in the database before the call by one conditional
  UPDATE (see keys.py) and settled to the actual cost after it, whether the call succeeded,
  failed or was cancelled; so spend never passes the budget, however many calls run at once. The
  worst case is, on the dearest model of the fallback plan, the prompt's tokens x input price +
  max_tokens x `n` x output price. The prompt's tokens are counted by the model's tokenizer
  when every deployment of that model is a `TokenCounter` that can tell, else bounded by
  `prompt_token_bound` (bytes plus allowances). A key with a budget or TPM limit whose request
  gives no max_tokens gets the model's `max_output_tokens` (else 4096, or the context length if
  smaller) as its max_tokens, which keeps the bound without reserving a whole context window.
- A reservation that fits what is left of the budget but not beside the calls in flight waits for
  them to settle (woken by each settlement of the key in this process, and polling every
  `BUDGET_POLL_S` for other processes), in line behind the key's earlier waiters, for at most
  `server.budget_wait_s`; then it is refused with 429 `rate_limit_exceeded` and `Retry-After`.
  `budget_exceeded` means what is spent leaves no room for the call's worst case: waiting would
  not help.

Admission and settlement run shielded from cancellation: a client that goes away mid-admission
still has what was taken given back. A settlement the database refuses (it is down) is queued
and retried in order with back-off (`SETTLE_RETRY_S` up to `SETTLE_RETRY_MAX_S`) until it is
back: the reservation keeps holding the call's worst case meanwhile, so the budget is never
passed, and once settled the key is charged what the call cost, once (`KeyStore.settle`'s
`again`). A call that needs the database while it is down (key lookup, budget reservation) is
refused with 503 (`outage.py`). This module does not price calls (the gateway sets
`Call.cost_usd`) and does not store keys (keys.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections import deque
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
from llmforge.core.types import Message, Sampling, Usage
from llmforge.gateway.call import Call, Caller, Reservation, TokenHold, cost_usd
from llmforge.gateway.keys import ApiKey, KeyStore, to_nusd, to_usd
from llmforge.gateway.outage import outage_as_503, outage_reason
from llmforge.models import ModelCatalog
from llmforge.models.base import TokenCounter

log = logging.getLogger(__name__)
T = TypeVar("T")

PER_MESSAGE_TOKENS = 16  # role markers and separators a chat template adds around each message
PER_REQUEST_TOKENS = 128  # a template's own default system prompt and generation prompt
TOOLS_TOKENS = 256  # the instructions a template wraps around tool descriptions
# an image, as Anthropic and OpenAI's GPT-4o/4.1 count it at most (GPT-4o mini counts images at
# many times this, so its image calls can cost more than they reserve)
PER_IMAGE_TOKENS = 2560
DEFAULT_OUTPUT_CAP = 4096  # max_tokens for budgeted calls when neither request nor model says
WINDOW_S = 60
STALE_RESERVATION_S = 24 * 3600  # reservations older than this were left by a dead process
BUDGET_WAIT_S = 5.0  # how long a reservation may wait for calls in flight to settle, by default
BUDGET_POLL_S = 0.1  # how often it looks again, for settlements by other processes
SETTLE_RETRY_S = 0.25  # first wait before retrying settlements the database refused
SETTLE_RETRY_MAX_S = 2.0  # the longest wait between retries
MASTER = Caller(key_id="master", name="master", master=True)


@dataclass(frozen=True)
class Settlement:
    """What one finished call owes its key's ledger: its reservation (if it had one) released
    and `nusd` charged."""

    call_id: str
    key_id: str
    reservation_id: str | None
    nusd: int


def prompt_token_bound(
    messages: Sequence[Message] = (),
    inputs: Sequence[str] = (),
    sampling: Sampling | None = None,
    text: str | None = None,
) -> int:
    """An upper bound of the prompt's tokens: every token covers at least one UTF-8 byte, plus
    allowances for what a chat template adds (per request, per message, around tools) and for
    each image. Covers the messages (or embedding `inputs`, or a raw `text` prompt) and the
    sampling's tool descriptions and JSON schema."""
    if inputs:
        return sum(len(t.encode()) + PER_MESSAGE_TOKENS for t in inputs)
    if text is not None:
        return len(text.encode()) + PER_MESSAGE_TOKENS
    return (
        PER_REQUEST_TOKENS
        + sum(_message_bytes(m) + PER_MESSAGE_TOKENS for m in messages)
        + (_sampling_bytes(sampling) if sampling is not None else 0)
    )


def _message_bytes(m: Message) -> int:
    n = len(m.content.encode()) + len((m.name or "").encode())
    n += len((m.tool_call_id or "").encode()) + PER_IMAGE_TOKENS * len(m.images)
    return n + sum(len(call.model_dump_json().encode()) for call in m.tool_calls)


def _sampling_bytes(sampling: Sampling) -> int:
    n = sum(len(tool.model_dump_json(exclude_none=True).encode()) for tool in sampling.tools)
    if sampling.tools:
        n += TOOLS_TOKENS
    if sampling.response_format is not None:
        n += len(sampling.response_format.model_dump_json(exclude_none=True).encode())
    return n


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries: `Authorization: Bearer <key>`, else `x-api-key`."""
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key", "").strip() or None


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
        budget_wait_s: float = BUDGET_WAIT_S,
    ) -> None:
        self.store = store
        self.rate_limits = rate_limits
        self.catalog = catalog
        self.master_key = master_key or None
        self.plan = plan or (lambda model: [model, *catalog.config(model).fallbacks])
        self.budget_wait_s = budget_wait_s
        self._background: set[asyncio.Future[Any]] = set()
        self._writer: ThreadPoolExecutor | None = None  # made on first use, see `_write`
        # per key: the line of reservations waiting for room, and the event its next settlement
        # in this process sets
        self._lines: dict[str, asyncio.Lock] = {}
        self._settled: dict[str, asyncio.Event] = {}
        # settlements the database refused, in order, and the task retrying them
        self._unsettled: deque[Settlement] = deque()
        self._retrying: asyncio.Future[None] | None = None
        self._closing = asyncio.Event()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: KeyStore,
        catalog: ModelCatalog,
        plan: Callable[[str], list[str]] | None = None,
    ) -> KeyAdmission:
        master = settings.master_key.get_secret_value() if settings.master_key else None
        return cls(
            store,
            RateLimits.from_settings(settings),
            catalog,
            master_key=master,
            plan=plan,
            budget_wait_s=settings.server.budget_wait_s,
        )

    async def start(self) -> None:
        released = await self._write(self.store.release_stale, STALE_RESERVATION_S)
        if released:
            log.warning("released %d budget reservation(s) left by a stopped process", released)

    async def aclose(self) -> None:
        """Finish what is in flight; settlements still owed get a last try, and those the
        database still refuses are logged (their reservations stay until `release_stale`)."""
        self._closing.set()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        for due in self._unsettled:
            log.error(
                "call %s of key %s could not be settled before shutdown (database unavailable): "
                "$%.9f not charged, its reservation held until released as stale",
                due.call_id, due.key_id, due.nusd / 1e9,
            )  # fmt: skip
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
        with outage_as_503():
            key = await asyncio.to_thread(self.store.lookup, secret)
        if key is None:
            raise AuthenticationError(
                f"Invalid API key '{secret[:8]}...': it is unknown or was revoked. "
                "See `llmforge keys list`."
            )
        return _caller(key)

    async def caller_for(self, key_id: str) -> Caller:
        """The caller a stored key id stands for, for work done on its behalf after its request
        ended (an agent run's steps, a run resumed after a restart): its current limits and
        budget; AuthenticationError when the key has been revoked since."""
        if key_id == MASTER.key_id:
            return MASTER
        with outage_as_503():
            key = await asyncio.to_thread(self.store.get, key_id)
        if not key.active:
            raise AuthenticationError(
                f"The API key '{key.prefix}...' ({key.name}) that started this work was revoked; "
                "its model calls stop with it."
            )
        return _caller(key)

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
        check_scope(caller, call.model)
        gone = asyncio.Event()  # set when our caller leaves: a reservation stops waiting
        await self._shielded(
            self._admit(call, caller, gone),
            on_cancel=lambda: self._settle_soon(call),
            gone=gone,
        )

    async def settle(self, call: Call) -> None:
        reservation = call.reservation
        if reservation is None:
            return  # not admitted here (anonymous, master, or refused)
        call.reservation = None
        await self._shielded(self._settle(call, reservation))

    async def _admit(self, call: Call, caller: Caller, gone: asyncio.Event) -> None:
        if caller.rpm is not None:
            await self._limits(self.rate_limits.hit_request(caller.key_id, caller.rpm, caller.name))
        reservation = Reservation(caller.key_id)
        bounded = caller.tpm is not None or caller.budget_usd is not None
        if bounded and call.kind != "embedding" and call.sampling.max_tokens is None:
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
                reservation.budget_id = await self._reserve_budget(
                    caller, reservation.worst_nusd, gone
                )
        except BaseException:
            if reservation.tokens is not None:
                await self._limits(self.rate_limits.correct(reservation.tokens, 0))
            raise
        call.reservation = reservation

    async def _settle(self, call: Call, reservation: Reservation) -> None:
        charged = self._charge(call, reservation)
        if reservation.budget_id is not None or charged:
            due = Settlement(call.id, reservation.key_id, reservation.budget_id, charged)
            if self._unsettled:  # in line behind earlier ones, which wait for the database
                self._owe(due)
            else:
                try:
                    await self._write(self.store.settle, due.reservation_id, due.key_id, charged)
                except SQLAlchemyError as e:
                    log.warning(
                        "could not settle call %s (%s); retrying", call.id, outage_reason(e)
                    )
                    self._owe(due)
                else:
                    self._woken(due.key_id)
        if reservation.tokens is not None:
            try:
                await self._limits(
                    self.rate_limits.correct(reservation.tokens, self._tokens_used(call))
                )
            except OverloadedError:
                log.exception("could not correct the token count of call %s", call.id)

    def _owe(self, due: Settlement) -> None:
        """Queue a settlement the database refused; `_settle_owed` retries it (its reservation
        keeps holding the call's worst case meanwhile, so the budget is never passed)."""
        self._unsettled.append(due)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.ensure_future(self._settle_owed())
            self._keep(self._retrying)

    async def _settle_owed(self) -> None:
        """Retry the queued settlements in order, with back-off, until the database takes them
        all (or the gateway closes, see `aclose`)."""
        delay = SETTLE_RETRY_S
        while self._unsettled:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            while self._unsettled:
                due = self._unsettled[0]
                try:
                    await self._write(
                        self.store.settle, due.reservation_id, due.key_id, due.nusd, True
                    )
                except SQLAlchemyError:
                    break
                self._unsettled.popleft()
                self._woken(due.key_id)
                log.info("settled call %s after the database came back", due.call_id)
            if self._closing.is_set():
                return
            delay = min(delay * 2, SETTLE_RETRY_MAX_S) if self._unsettled else SETTLE_RETRY_S

    def _woken(self, key_id: str) -> None:
        settled = self._settled.pop(key_id, None)
        if settled is not None:
            settled.set()  # wakes the first reservation waiting for this key

    async def _reserve_budget(self, caller: Caller, amount_nusd: int, gone: asyncio.Event) -> str:
        """The ledger's reservation of `amount_nusd` for the key. While calls in flight hold the
        room it needs, wait (in line behind the key's earlier waiters) for their settlements, at
        most `budget_wait_s`; then RateLimitError. BudgetExceededError at once when what is spent
        leaves no room. CancelledError when `gone` is set (the caller left) while waiting."""
        key_id = caller.key_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget_wait_s
        line = self._lines.setdefault(key_id, asyncio.Lock())
        settled: asyncio.Event | None = None  # taken just before the last try that failed
        in_line = False
        try:
            if not line.locked():  # nobody waits: try at once (others wait: no overtaking them)
                settled = self._settled.setdefault(key_id, asyncio.Event())
                rid = await self._reserve(key_id, amount_nusd)
                if rid is not None:
                    return rid
            in_line = await _until(line.acquire(), deadline - loop.time(), gone)
            while in_line and not gone.is_set():
                if settled is not None:  # wait for a settlement, or look again soon
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    await _until(settled.wait(), min(left, BUDGET_POLL_S), gone)
                    if gone.is_set():
                        break
                settled = self._settled.setdefault(key_id, asyncio.Event())
                rid = await self._reserve(key_id, amount_nusd)
                if rid is not None:
                    return rid
            if gone.is_set():
                raise asyncio.CancelledError
            raise await self._held_refusal(caller, amount_nusd)
        finally:
            if in_line:
                line.release()

    async def _reserve(self, key_id: str, amount_nusd: int) -> str | None:
        with outage_as_503():
            return await self._write(self.store.reserve, key_id, amount_nusd)

    async def _held_refusal(self, caller: Caller, amount_nusd: int) -> RateLimitError:
        with outage_as_503():
            key = await asyncio.to_thread(self.store.get, caller.key_id)
        held = f"${key.reserved_usd:.6f}" if key.reserved_usd else "the rest"
        return RateLimitError(
            f"Calls in flight on key '{caller.name}' hold {held} of its "
            f"${key.budget_usd or 0:.6f} budget (${key.spent_usd:.6f} spent), and this request "
            f"could cost up to ${to_usd(amount_nusd) or 0:.6f}; no room came free within "
            f"{self.budget_wait_s:g} s. Retry after the Retry-After seconds, or lower max_tokens "
            "so the request's worst case is smaller.",
            retry_after_s=1.0,
        )

    # -- bounds and charges ---------------------------------------------------------------------

    def output_cap(self, model: str) -> int:
        config = self.catalog.config(model)
        return config.max_output_tokens or min(
            DEFAULT_OUTPUT_CAP, config.context_length or DEFAULT_OUTPUT_CAP
        )

    def token_bound(self, call: Call) -> int:
        """The most tokens the call can use (TPM): prompt and output, on any model of its plan."""
        if call.kind == "embedding":
            return prompt_token_bound(inputs=call.inputs)
        output = (call.sampling.max_tokens or 0) * call.sampling.n
        return max(self.prompt_tokens(call, m) for m in self.plan(call.model)) + output

    def worst_case_nusd(self, call: Call) -> int:
        """The most the call can cost: its prompt's tokens (read once, for all `n` answers, as
        every backend does) and max_tokens for each of the `n` answers, on the dearest model the
        router may serve it with. Embedding models have no price."""
        if call.kind == "embedding":
            return 0
        output = (call.sampling.max_tokens or 0) * call.sampling.n
        costs = []
        for model in self.plan(call.model):
            price = self.catalog.config(model).price
            prompt = self.prompt_tokens(call, model) if price.input_per_mtok else 0
            costs.append((prompt * price.input_per_mtok + output * price.output_per_mtok) / 1e6)
        return to_nusd(max(costs), up=True)

    def prompt_tokens(self, call: Call, model: str) -> int:
        """The call's prompt tokens on `model`: counted by its tokenizer when every deployment of
        it is a TokenCounter that can tell now, else `prompt_token_bound`."""
        if call.kind == "text":
            return prompt_token_bound(text=call.prompt)
        counts = []
        for deployment in self.catalog.deployments(model):
            backend = deployment.backend
            count = None
            if isinstance(backend, TokenCounter):
                try:
                    count = backend.count_prompt_tokens(call.messages, call.sampling)
                except Exception as e:  # a counter's bug must not refuse calls
                    log.warning("%s could not count a prompt (%r); bounding it by bytes", model, e)
            if count is None:
                return prompt_token_bound(call.messages, sampling=call.sampling)
            counts.append(count)
        return max(counts)

    def _charge(self, call: Call, reservation: Reservation) -> int:
        """What the call costs the key, in nano-dollars. A call that produced text without
        reporting usage (a stream the client left) is charged an estimate (4 bytes a token), at
        most its reservation, and `call.cost_usd` says so."""
        unreported = not call.usage.total_tokens and call.cache not in ("hit", "semantic_hit")
        if call.kind != "embedding" and unreported and call.output and call.served_by:
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
        self,
        op: Coroutine[Any, Any, None],
        on_cancel: Callable[[], None] | None = None,
        gone: asyncio.Event | None = None,
    ) -> None:
        """Run `op` to the end even if our caller is cancelled; `gone` is then set (so `op` may
        stop waiting) and `on_cancel` runs after `op` succeeded for a caller that is gone."""
        task = asyncio.ensure_future(op)
        self._keep(task)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if gone is not None:
                gone.set()
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


async def _until(op: Coroutine[Any, Any, Any], timeout: float, gone: asyncio.Event) -> bool:
    """Await `op` for at most `timeout` seconds, or until `gone` is set; whether it finished."""
    task = asyncio.ensure_future(op)
    leave = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait(
            (task, leave), timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        leave.cancel()
        if not task.done():
            task.cancel()
        await asyncio.wait((task,))  # let a cancelled lock.acquire() put the lock back in order
    return not task.cancelled() and task.exception() is None


def _estimated_usage(call: Call) -> Usage:
    prompt = sum(len(m.content.encode()) for m in call.messages)
    if call.kind == "text":
        prompt += len(call.prompt.encode())
    return Usage(
        prompt_tokens=math.ceil(prompt / 4), completion_tokens=math.ceil(len(call.output) / 4) + 1
    )


def _caller(key: ApiKey) -> Caller:
    return Caller(
        key_id=key.id,
        name=key.name,
        models=tuple(key.models) if key.models else None,
        rpm=key.rpm,
        tpm=key.tpm,
        budget_usd=key.budget_usd,
    )


def check_scope(caller: Caller | None, model: str) -> None:
    """PermissionDeniedError when the caller's key may not use `model` (no key, the master key
    and keys without a model list may use any)."""
    if caller is not None and caller.models is not None and model not in caller.models:
        raise PermissionDeniedError(
            f"Key '{caller.name}' may not use model '{model}'; it may use "
            f"{', '.join(caller.models)}. Create a key whose --models include it.",
            param="model",
        )
