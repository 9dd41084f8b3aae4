"""Which guards run on a call, and running them: `GuardPipeline` and its per-call `Screen`.

`GuardPipeline` is built once from the `guard:` section: every configured guard, the policies that
combine them and who gets which policy (an API key's id or name first, then the model, then
`default`). `screen(model, key_id, key_name, call_id)` is None when no policy applies (the gateway
then does nothing more for the call); otherwise a `Screen` for that one call:

- `check_input(messages)`: runs the input guards (blocking and refusing guards on the new turn's
  user and tool messages; masking and redacting guards on every user and tool message, since the
  model sees the whole conversation). A `block` raises `GuardBlockedError` (400 with the guard's
  code); a `refuse` returns the refusal as the answer; `mask` swaps values for placeholders the
  answer gets back (masking.py), `redact` replaces them for good. Returns what the model sees.
- `check_output(completion)` / `watch(deltas)`: the output guards over the whole answer, or over
  a stream in windows of `stream_window` characters (held back until checked, so a stream a guard
  blocks stops there with finish reason `content_filter` and the backend stops generating);
  personal data the model produced is redacted, placeholders restored.
- `scrub(text)`: the text as traces keep it (placeholders for masked values; with the policy's
  `trace: masked`, every value `find_pii` finds).

Each hit is written to the audit log (hashes, not text) and queued for review; a share
(`review_sample`) of all screened calls is queued too. It knows nothing of HTTP or of the gateway's
`Call`: the gateway hands it core types.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import AsyncGenerator, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from llmforge.audit import AuditLog
from llmforge.core.config import GuardConfig, GuardPolicy, GuardSpec
from llmforge.core.errors import ConfigError, UnknownNameError
from llmforge.core.types import Choice, Completion, Delta, Message, TokenLogprob, ToolCall
from llmforge.guard.base import (
    SEVERITY,
    Guard,
    GuardBlockedError,
    GuardContext,
    GuardFactory,
    Span,
    Verdict,
    Where,
    guards,
)
from llmforge.guard.masking import StreamRestorer, Vault, redact
from llmforge.guard.pii import find_pii
from llmforge.guard.review import NewReview, ReviewQueue, judge_score
from llmforge.models.base import ChatModel

log = logging.getLogger(__name__)
HOLD_BACK = 64  # at most: characters of a stream kept back after each check (half the window),
# so a value across two windows is seen whole by the next check


def register_builtins() -> None:
    """The built-in guard types, registered as a plugin's would be (unless already there)."""
    from llmforge.guard import injection, moderation, pii

    builtins: dict[str, GuardFactory] = {
        "injection": injection.create,
        "pii": pii.create,
        "moderation": moderation.create,
        "keywords": moderation.create_keywords,
    }
    for name, factory in builtins.items():
        try:
            guards.get(name)
        except UnknownNameError:
            guards.register(name, factory)


@dataclass
class ConfiguredGuard:
    spec: GuardSpec
    guard: Guard


@dataclass
class Policy:
    name: str
    config: GuardPolicy
    input: list[ConfiguredGuard] = field(default_factory=list)
    output: list[ConfiguredGuard] = field(default_factory=list)


class GuardPipeline:
    def __init__(
        self,
        config: GuardConfig,
        context: GuardContext | None = None,
        *,
        engine: Engine | None = None,
        known_models: Collection[str] | None = None,
        judge: Callable[[str], ChatModel] | None = None,
    ) -> None:
        register_builtins()
        if known_models is not None:
            unknown = sorted(set(config.models) - set(known_models))
            if unknown:
                raise ConfigError(
                    f"guard.models: unknown model(s) {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(known_models)) or '(none)'}. A misspelt name would leave "
                    "that model unguarded."
                )
        self.config = config
        self.guards = {
            spec.name: ConfiguredGuard(spec, guards.get(spec.type)(spec, context or GuardContext()))
            for spec in config.guards
        }
        self.policies = {
            name: Policy(
                name,
                p,
                [self.guards[g] for g in p.input],
                [self.guards[g] for g in p.output],
            )
            for name, p in config.policies.items()
        }
        self.audit = AuditLog(engine) if engine is not None else None
        self.reviews = ReviewQueue(engine) if engine is not None else None
        self.judge = judge(config.review_judge) if judge and config.review_judge else None
        self._tasks: set[asyncio.Task[None]] = set()

    def policy_for(self, model: str, key_id: str | None, key_name: str | None) -> Policy | None:
        keys = self.config.keys
        name = (
            (keys.get(key_id) if key_id else None)
            or (keys.get(key_name) if key_name else None)
            or self.config.models.get(model)
            or self.config.default
        )
        return self.policies[name] if name is not None else None

    def screen(
        self, model: str, key_id: str | None = None, key_name: str | None = None, call_id: str = ""
    ) -> Screen | None:
        policy = self.policy_for(model, key_id, key_name)
        if policy is None:
            return None
        return Screen(self, policy, model, key_id, call_id)

    async def scan(
        self, text: str, *, policy: str | None = None, where: Where = "input"
    ) -> list[Verdict]:
        """Every input guard of `policy` (default: every configured guard) on one text."""
        if policy is not None and policy not in self.policies:
            raise UnknownNameError("guard policy", policy, self.policies)
        chosen = self.policies[policy].input if policy else list(self.guards.values())
        return list(await asyncio.gather(*(g.guard.check(text, where) for g in chosen)))

    async def report(
        self,
        verdict: Verdict,
        spec: GuardSpec,
        text: str,
        where: Where,
        *,
        model: str | None = None,
        key_id: str | None = None,
        call_id: str | None = None,
        flagged: bool = True,
    ) -> str | None:
        """Audit a hit (no text: its SHA-256) and queue it for review; the review's id."""
        if self.audit is not None and flagged:
            data = {
                "guard": verdict.guard,
                "action": verdict.action,
                "code": verdict.code,
                "score": round(verdict.score, 4),
                "stage": verdict.stage,
                "where": where,
                "model": model,
                "text_sha256": hashlib.sha256(text.encode("utf-8", "replace")).hexdigest(),
            }
            await asyncio.to_thread(
                self.audit.record, "guard.verdict", actor=key_id, subject=call_id, data=data
            )
        if self.reviews is None:
            return None
        item = NewReview(
            guard=verdict.guard,
            guard_type=spec.type,
            direction=where,
            action=verdict.action,
            flagged=flagged,
            score=verdict.score,
            code=verdict.code or None,
            text=text,
            call_id=call_id,
            model=model,
            key_id=key_id,
        )
        review_id = await asyncio.to_thread(self.reviews.add, item)
        if self.judge is not None:
            self._spawn(self._pre_score(review_id, item))
        return review_id

    async def _pre_score(self, review_id: str, item: NewReview) -> None:
        assert self.judge is not None and self.reviews is not None
        try:
            score = await judge_score(self.judge, item)
        except Exception as e:  # the judge is advisory: a failure leaves the item unscored
            log.warning("review judge failed on %s: %s", review_id, e)
            return
        if score is not None:
            await asyncio.to_thread(self.reviews.set_judge_score, review_id, score)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        for g in self.guards.values():
            await g.guard.aclose()


class Screen:
    """One call's guards (see the module docstring)."""

    def __init__(
        self,
        pipeline: GuardPipeline,
        policy: Policy,
        model: str,
        key_id: str | None,
        call_id: str,
    ) -> None:
        self.pipeline = pipeline
        self.policy = policy
        self.model, self.key_id, self.call_id = model, key_id, call_id
        self.vault = Vault()
        self.verdicts: list[Verdict] = []
        self._flagged: set[str] = set()  # output guards whose allowed hit was reported

    # -- input ----------------------------------------------------------------------------------

    async def check_input(self, messages: Sequence[Message]) -> list[Message] | Completion:
        """What the model sees; or the refusal to answer with instead; or GuardBlockedError."""
        out = list(messages)
        new_turn = next(
            (i + 1 for i in range(len(out) - 1, -1, -1) if out[i].role == "assistant"), 0
        )
        jobs: list[tuple[int, ConfiguredGuard, Where]] = []
        for i, m in enumerate(out):
            if m.role not in ("user", "tool") or not m.content:
                continue
            where: Where = "tool" if m.role == "tool" else "input"
            for g in self.policy.input:
                if i >= new_turn or g.spec.action in ("mask", "redact"):
                    jobs.append((i, g, where))
        verdicts = await asyncio.gather(*(g.guard.check(out[i].content, w) for i, g, w in jobs))
        hits = [
            (v, i, g, w)
            for v, (i, g, w) in zip(verdicts, jobs, strict=True)
            if v.code  # a hit (an allowed text carries no code)
        ]
        self.verdicts.extend(verdicts)
        await self._sample(out, new_turn)
        if not hits:
            return out
        worst = max(hits, key=lambda h: SEVERITY[h[0].action])
        verdict, index, guard, where = worst
        if verdict.action in ("block", "refuse"):
            shown = self._masked_copy(out[index].content)
            review_id = await self._report(verdict, guard.spec, shown, where)
            if verdict.action == "block":
                raise GuardBlockedError(verdict, review_id=review_id)
            return Completion(text=guard.spec.refusal, finish_reason="content_filter")
        spans: dict[int, list[tuple[Span, str]]] = {}
        for v, i, g, w in hits:
            if v.action in ("mask", "redact"):
                spans.setdefault(i, []).extend((s, v.action) for s in v.spans)
            else:  # action allow: recorded and reviewed, the call goes on
                await self._report(v, g.spec, self._masked_copy(out[i].content), w)
        for i, found in spans.items():
            text = out[i].content
            redacted = [s for s, action in found if action == "redact"]
            masked = [s for s, action in found if action == "mask"]
            text = self._replace(text, masked, redacted)
            out[i] = out[i].model_copy(update={"content": text})
        if self.vault:
            out = [
                m if m.role in ("user", "tool") else m.model_copy(
                    update={"content": self.vault.scrub(m.content)}
                )
                for m in out
            ]  # fmt: skip
        return out

    def _replace(self, text: str, masked: list[Span], redacted: list[Span]) -> str:
        """Apply both kinds of replacement in one pass, right to left so offsets hold."""
        for span, kind in sorted(
            [(s, "mask") for s in masked] + [(s, "redact") for s in redacted],
            key=lambda p: p[0].start,
            reverse=True,
        ):
            piece = text[span.start : span.end]
            new = self.vault.mask(piece, [Span(start=0, end=len(piece), kind=span.kind)])
            if kind == "redact":
                new = redact(piece, [Span(start=0, end=len(piece), kind=span.kind)])
            text = text[: span.start] + new + text[span.end :]
        return text

    async def _sample(self, messages: list[Message], new_turn: int) -> None:
        share = self.policy.config.review_sample
        if share <= 0 or random.random() >= share or self.pipeline.reviews is None:
            return
        turn = [m.content for m in messages[new_turn:] if m.role in ("user", "tool") and m.content]
        if not turn:
            return
        guard = self.policy.input[0] if self.policy.input else None
        if guard is None:
            return
        sample = Verdict(guard=guard.spec.name, action="allow", code="sampled")
        text = self._masked_copy("\n\n".join(turn))
        await self._report(sample, guard.spec, text, "input", flagged=False)

    def _masked_copy(self, text: str) -> str:
        """Text as it may be stored (review queue): personal data masked."""
        return self.vault.scrub(text) if self.vault else redact(text, find_pii(text))

    async def _report(
        self, verdict: Verdict, spec: GuardSpec, text: str, where: Where, flagged: bool = True
    ) -> str | None:
        return await self.pipeline.report(
            verdict,
            spec,
            text,
            where,
            model=self.model,
            key_id=self.key_id,
            call_id=self.call_id,
            flagged=flagged,
        )

    # -- output ---------------------------------------------------------------------------------

    async def check_output(self, completion: Completion) -> Completion:
        """The answer as the client gets it."""
        choices = completion.choices()
        shown: list[Choice] = []
        for choice in choices:
            text, refusal = await self._check_text(choice.text)
            if refusal is not None:
                shown.append(
                    Choice(index=choice.index, text=refusal, finish_reason="content_filter")
                )
                continue
            calls = tuple(self._restore_call(c) for c in choice.tool_calls)
            shown.append(
                choice.model_copy(update={"text": self.vault.restore(text), "tool_calls": calls})
            )
        first = shown[0]
        return completion.model_copy(
            update={
                "text": first.text,
                "finish_reason": first.finish_reason,
                "tool_calls": first.tool_calls,
                "logprobs": first.logprobs if first.finish_reason != "content_filter" else None,
                "extra_choices": tuple(shown[1:]),
            }
        )

    def _restore_call(self, call: ToolCall) -> ToolCall:
        if not self.vault:
            return call
        return call.model_copy(update={"arguments": self.vault.restore(call.arguments)})

    async def _check_text(self, text: str, context: str = "") -> tuple[str, str | None]:
        """(text with the model's own personal data redacted, refusal if blocked). `context` is
        the text just before (already released), read but not changed."""
        if not self.policy.output or not text:
            return text, None
        whole = context + text
        verdicts = await asyncio.gather(
            *(g.guard.check(whole, "output") for g in self.policy.output)
        )
        self.verdicts.extend(verdicts)
        spans: list[Span] = []
        for v, g in zip(verdicts, self.policy.output, strict=True):
            if v.action in ("block", "refuse"):
                await self._report(v, g.spec, self._masked_copy(whole), "output")
                return "", g.spec.refusal
            if v.action in ("mask", "redact"):
                spans.extend(
                    Span(start=s.start - len(context), end=s.end - len(context), kind=s.kind)
                    for s in v.spans
                    if s.end > len(context) and not _is_placeholder(whole, s)
                )
            elif v.code and g.spec.name not in self._flagged:  # allowed, but a hit: once a call
                self._flagged.add(g.spec.name)
                await self._report(v, g.spec, self._masked_copy(whole), "output")
        spans = [s.model_copy(update={"start": max(s.start, 0)}) for s in spans]
        return (redact(text, spans) if spans else text), None

    async def watch(self, deltas: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
        """The stream as the client gets it (see the module docstring). Closing it closes
        `deltas`, which stops the backend."""
        window = self.pipeline.config.stream_window
        hold_back = min(HOLD_BACK, window // 2)
        pending: dict[int, str] = {}
        released: dict[int, str] = {}
        logprobs: dict[int, list[TokenLogprob]] = {}
        restorers: dict[int, StreamRestorer] = {}
        guarded = bool(self.policy.output)

        async def release(choice: int, final: bool) -> tuple[str, bool]:
            text = pending.get(choice, "")
            hold = "" if final or len(text) <= hold_back else text[-hold_back:]
            text = text[: len(text) - len(hold)] if hold else text
            context = released.get(choice, "")[-window:]
            if guarded:
                checked, refusal = await self._check_text(text + hold, context)
                if refusal is not None:
                    return "", True
                cut = len(checked) - len(hold)
                text, hold = checked[:cut], checked[cut:]
            pending[choice] = hold
            released[choice] = (released.get(choice, "") + text)[-window:]
            restorer = restorers.setdefault(choice, StreamRestorer(self.vault))
            out = restorer.feed(text)
            return (out + restorer.flush() if final else out), False

        try:
            async for delta in deltas:
                c = delta.choice
                if delta.text:
                    pending[c] = pending.get(c, "") + delta.text
                    if delta.logprobs:
                        logprobs.setdefault(c, []).extend(delta.logprobs)
                    if len(pending[c]) < window and not delta.finish_reason:
                        continue
                final = delta.finish_reason is not None
                if pending.get(c) or final:
                    text, blocked = await release(c, final)
                    if blocked:
                        yield Delta(finish_reason="content_filter", choice=c, usage=delta.usage)
                        return
                    if text or (final and logprobs.get(c)):
                        yield Delta(text=text, choice=c, logprobs=logprobs.pop(c, None))
                rest = delta.model_copy(update={"text": "", "logprobs": None})
                if rest.tool_calls and self.vault:
                    rest = rest.model_copy(
                        update={
                            "tool_calls": tuple(
                                t.model_copy(update={"arguments": self.vault.restore(t.arguments)})
                                for t in rest.tool_calls
                            )
                        }
                    )
                if rest.finish_reason or rest.tool_calls or rest.usage or rest.sources:
                    yield rest
        finally:
            await deltas.aclose()

    # -- traces ---------------------------------------------------------------------------------

    @property
    def masks_traces(self) -> bool:
        return bool(self.vault) or self.policy.config.trace == "masked"

    def scrub(self, text: str) -> str:
        """`text` as traces keep it."""
        text = self.vault.scrub(text) if self.vault else text
        if self.policy.config.trace == "masked":
            text = self.vault.mask(text, find_pii(text))
        return text


def _is_placeholder(text: str, span: Span) -> bool:
    return text[span.start : span.end].startswith("[") and text[span.end - 1 : span.end] == "]"
