"""`Call`: one request travelling the gateway — what was asked, by whom, and what happened to it.

The HTTP routes and the CLI build a Call; admission (keys, limits, budgets), the cache, the router
and the metrics each read or fill in their part; at the end it becomes the trace row. It is a plain
mutable record with no behaviour beyond deriving the trace and the cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from llmforge.core.config import Price
from llmforge.core.db import sortable_id
from llmforge.core.types import Message, Sampling, ToolCall, Usage
from llmforge.traces import Trace

CacheState = Literal["off", "miss", "hit", "semantic_hit"]
ID_PREFIXES = {"chat": "chatcmpl-", "text": "cmpl-", "embedding": "embd-"}


@dataclass(frozen=True)
class Caller:
    """Who is calling: the API key's identity and its limits (None fields: unlimited)."""

    key_id: str
    name: str
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    master: bool = False


@dataclass(frozen=True)
class TokenHold:
    """Tokens taken from one key's per-minute window, to be corrected after the call."""

    counter: str
    tokens: int


@dataclass
class Reservation:
    """What admission took for a call (`Call.reservation`), given back when it settles."""

    key_id: str
    budget_id: str | None = None  # the ledger's reservation, when the key has a budget
    worst_nusd: int = 0
    tokens: TokenHold | None = None


@dataclass
class Call:
    model: str
    messages: list[Message] = field(default_factory=list)
    sampling: Sampling = field(default_factory=Sampling)
    stream: bool = False
    kind: Literal["chat", "text", "embedding"] = "chat"
    inputs: list[str] = field(default_factory=list)  # embedding calls
    prompt: str = ""  # text calls (legacy completions): the raw prompt
    metadata: dict[str, str] = field(default_factory=dict)  # the caller's tags, traced
    caller: Caller | None = None
    use_cache: bool = True
    id: str = ""
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    # filled in along the way
    served_by: str | None = None
    deployment: str | None = None
    retries: int = 0
    fallbacks: list[str] = field(default_factory=list)
    cache: CacheState = "off"
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    upstream_s: float = 0.0
    ttft_s: float | None = None
    output: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    status: Literal["ok", "error", "cancelled"] = "ok"
    error: str | None = None
    error_type: str | None = None
    reservation: Reservation | None = None  # what admission took, settled after the call

    def __post_init__(self) -> None:
        if not self.id:
            self.id = ID_PREFIXES[self.kind] + sortable_id()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def overhead_ms(self) -> float:
        """The gateway's own time so far: everything but waiting on model backends."""
        return max(self.elapsed_s() - self.upstream_s, 0.0) * 1000

    def to_trace(self) -> Trace:
        """The trace row. Built unvalidated: every field comes from this Call's typed fields, and
        this runs once per request on the event loop."""
        sampling = self.sampling.model_dump(exclude_none=True, exclude_defaults=True)
        requests: dict[str, dict[str, object]] = {
            "chat": {"messages": [m.compact() for m in self.messages], "sampling": sampling},
            "text": {"prompt": self.prompt, "sampling": sampling},
            "embedding": {"input": self.inputs},
        }
        request = requests[self.kind]
        return Trace.model_construct(
            id=self.id,
            created_at=time.time(),
            kind=self.kind,
            model=self.model,
            request=request,
            output=self.output,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
            latency_ms=self.elapsed_s() * 1000,
            ttft_ms=None if self.ttft_s is None else self.ttft_s * 1000,
            status=self.status,
            error=self.error,
            stream=self.stream,
            served_by=self.served_by,
            deployment=self.deployment,
            retries=self.retries,
            fallbacks=self.fallbacks,
            cache=self.cache,
            cost_usd=self.cost_usd,
            key_id=self.caller.key_id if self.caller else None,
            tool_calls=[c.model_dump() for c in self.tool_calls] or None,
            finish_reason=self.finish_reason,
            metadata=self.metadata or None,
        )


def cost_usd(price: Price, usage: Usage) -> float:
    return (
        usage.prompt_tokens * price.input_per_mtok + usage.completion_tokens * price.output_per_mtok
    ) / 1_000_000
