"""The Guard protocol, its verdicts, its registry and the error a blocked input raises.

A guard reads one text and returns a `Verdict`: `allow`, `mask` / `redact` (with the `spans` to
replace), `refuse` or `block`, with the score that decided it. Guards are built by factories
registered under a type name (entry points `llmforge.guards`), exactly like model backends; a
factory gets the guard's config section and a `GuardContext` (embedders and chat models it may
use). Guards know nothing of HTTP, calls or policies: which guard runs where, for which model and
key, is `pipeline.py`'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from llmforge.core.config import GuardSpec
from llmforge.core.errors import InvalidRequestError
from llmforge.core.registry import Registry
from llmforge.models.base import ChatModel, Embedder

Action = Literal["allow", "mask", "redact", "refuse", "block"]
Where = Literal["input", "tool", "output"]
SEVERITY: dict[Action, int] = {"allow": 0, "mask": 1, "redact": 2, "refuse": 3, "block": 4}


class Span(BaseModel):
    """A piece of the text a guard found: characters `start:end`, of kind `kind` (`email`,
    `card`, `injection`, ...)."""

    model_config = ConfigDict(frozen=True)

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    kind: str
    score: float = 1.0


class Verdict(BaseModel):
    """What one guard decided about one text."""

    model_config = ConfigDict(frozen=True)

    guard: str = Field(description="the guard's configured name")
    action: Action
    score: float = Field(0.0, description="how sure the guard is that the text is a hit, 0-1")
    code: str = Field("", description="machine-readable reason, e.g. `prompt_injection`")
    reason: str = ""
    spans: tuple[Span, ...] = ()
    stage: str = Field("", description="which part decided: `rules`, `classifier`, `judge`")

    @property
    def hit(self) -> bool:
        """Whether the guard found something (an `allow` action may still be a hit to record)."""
        return bool(self.code)


@runtime_checkable
class Guard(Protocol):
    """Reads a text; says what to do with it."""

    name: str

    async def check(self, text: str, where: Where) -> Verdict: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class GuardContext:
    """What a guard factory may use: the process's embedders and chat models, by name."""

    embedder: Callable[[str], Embedder] | None = None
    chat: Callable[[str], ChatModel] | None = None


GuardFactory = Callable[[GuardSpec, GuardContext], Guard]
guards: Registry[GuardFactory] = Registry("guard type", "llmforge.guards")


class GuardBlockedError(InvalidRequestError):
    """A guard blocked the request's input (400, with the guard's code)."""

    def __init__(self, verdict: Verdict, *, review_id: str | None = None) -> None:
        self.verdict = verdict
        self.code = verdict.code or "guard_blocked"
        review = f" It was queued for review as {review_id}." if review_id else ""
        super().__init__(
            f"Blocked by guard '{verdict.guard}' [{self.code}]: {verdict.reason or verdict.code} "
            f"(score {verdict.score:.2f}).{review} If this is a mistake, rephrase the request, or "
            f"ask the administrator to review it or raise the threshold of guard "
            f"'{verdict.guard}' under `guard.guards` in llmforge.yaml.",
            param="messages",
        )


def allow(guard: str, score: float = 0.0, stage: str = "") -> Verdict:
    return Verdict(guard=guard, action="allow", score=score, stage=stage)
