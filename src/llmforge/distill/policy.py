"""Route: the policy on a model name that sends part of its traffic to a distilled student.

For a call to a routed model M (usually the teacher) the gateway's router asks `RoutePolicy`:

- with probability `share` the **student** answers (with log-probabilities). The answer is
  **escalated** to M when the student is unsure (mean token log-probability under `min_logprob`),
  breaks the request's JSON schema, or fails. An escalation is recorded with both answers.
- otherwise M answers; with probability `shadow` (not for streams) the student answers the same
  prompt first, and whether the two agree is recorded: the **online comparison**.
- `promote` sends every call to the student once at least `promote_min` compared calls agree at
  `promote_agreement` or more (or when forced); with `auto_promote` the policy does it by itself.
  `rollback` sends every call back to M at once, and may re-activate an earlier student version.

Escalations and disagreements are the next dataset (`collect.source: feedback`): the loop closes.
Calls the student cannot take (tools, n > 1) are left to the router. Routes are read from the
database at most every `distill.refresh_s`, so `llmforge distill promote` / `rollback` in another
process reach a running gateway within that. Chosen calls are tagged in their trace metadata:
`distill.served` = student | teacher | escalated (and `distill.reason`). While the database is
down the policy keeps the routes it last read and answers without recording feedback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from llmforge.core.errors import InvalidRequestError, LLMForgeError
from llmforge.core.settings import Settings
from llmforge.core.types import Completion, Message, Sampling
from llmforge.distill.config import RouteSpec
from llmforge.distill.label import normalized
from llmforge.distill.store import DistillStore, Feedback, Route
from llmforge.evals.metrics import json_errors

log = logging.getLogger(__name__)
Serve = Callable[[str, Sampling], Awaitable[Completion]]


def mean_logprob(answer: Completion) -> float | None:
    values = [lp.logprob for lp in answer.logprobs or []]
    return statistics.fmean(values) if values else None


class RoutePolicy:
    """The gateway router's `CallPolicy` for distilled students (see the module docstring)."""

    def __init__(
        self, store: DistillStore, refresh_s: float = 2.0, rng: random.Random | None = None
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._rng = rng or random.Random()
        self._routes: dict[str, Route] = {}
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> RoutePolicy:
        return cls(DistillStore(engine), settings.distill.refresh_s)

    def invalidate(self) -> None:
        """Re-read the routes on the next call (after a change made in this process)."""
        self._read_at = -float("inf")

    async def routes(self) -> dict[str, Route]:
        if time.monotonic() - self._read_at >= self.refresh_s:
            async with self._lock:
                if time.monotonic() - self._read_at >= self.refresh_s:
                    try:
                        found = await asyncio.to_thread(self.store.routes)
                    except SQLAlchemyError as e:  # the database is down: keep the last routes
                        log.warning("distill routes not re-read (%s); keeping the last ones", e)
                    else:
                        self._routes = {r.model: r for r in found}
                    self._read_at = time.monotonic()
        return self._routes

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
        route = (await self.routes()).get(model)
        if route is None or (route.share <= 0 and route.shadow <= 0):
            return None
        if sampling.n > 1 or sampling.calls_tools:
            return None
        tags["distill.route"] = model
        if self._rng.random() < route.share:
            return await self._student_first(route, messages, sampling, serve, tags)
        if stream or not route.shadow or self._rng.random() >= route.shadow:
            tags["distill.served"] = "teacher"
            return None
        student = await self._ask_student(route, sampling, serve)
        teacher = await serve(model, sampling)
        tags["distill.served"] = "teacher"
        if isinstance(student, Completion):
            same = normalized(student.text) == normalized(teacher.text)
            await self._record(
                route,
                "agreement" if same else "disagreement",
                None,
                messages,
                student.text,
                teacher.text,
            )
        return teacher

    async def _student_first(
        self,
        route: Route,
        messages: Sequence[Message],
        sampling: Sampling,
        serve: Serve,
        tags: dict[str, str],
    ) -> Completion:
        student = await self._ask_student(route, sampling, serve)
        reason = student if isinstance(student, str) else _doubt(student, sampling, route)
        if reason is None and isinstance(student, Completion):
            tags["distill.served"] = "student"
            return student if sampling.logprobs else student.model_copy(update={"logprobs": None})
        teacher = await serve(route.model, sampling)
        tags["distill.served"], tags["distill.reason"] = "escalated", str(reason)
        await self._record(
            route,
            "escalation",
            reason,
            messages,
            student.text if isinstance(student, Completion) else None,
            teacher.text,
        )
        return teacher

    async def _ask_student(
        self, route: Route, sampling: Sampling, serve: Serve
    ) -> Completion | str:
        """The student's answer, or why there is none."""
        try:
            return await serve(route.student, sampling.model_copy(update={"logprobs": True}))
        except InvalidRequestError as e:
            return f"student refused: {e.code}"
        except LLMForgeError as e:
            return f"student failed: {type(e).__name__}"

    async def _record(
        self,
        route: Route,
        kind: str,
        reason: str | None,
        messages: Sequence[Message],
        student: str | None,
        teacher: str | None,
    ) -> None:
        feedback = Feedback.model_validate(
            {
                "route": route.model,
                "kind": kind,
                "reason": reason,
                "messages": list(messages),
                "student_answer": student,
                "teacher_answer": teacher,
            }
        )
        try:
            await asyncio.to_thread(self.store.add_feedback, feedback)
        except SQLAlchemyError as e:  # the answer stands; only the record of it is lost
            log.warning("distill feedback not recorded (%s)", e)
            return
        if route.auto_promote and route.state == "canary" and kind != "escalation":
            comparison = await asyncio.to_thread(
                self.store.comparison, route.model, route.updated_at
            )
            agreement = comparison.agreement
            if (
                comparison.compared >= route.promote_min
                and agreement is not None
                and agreement >= route.promote_agreement
            ):
                await asyncio.to_thread(self.store.set_share, route.model, 1.0, "promoted")
                self.invalidate()


def _doubt(answer: Completion, sampling: Sampling, route: Route) -> str | None:
    """Why the student's answer should go to the teacher instead (None: it stands)."""
    confidence = mean_logprob(answer)
    if confidence is not None and confidence < route.min_logprob:
        return "low_confidence"
    schema = sampling.json_schema
    if schema is not None and json_errors(answer.text, schema):
        return "schema"
    return None


# -- the commands ----------------------------------------------------------------------------


def open_route(store: DistillStore, model: str, student: str, spec: RouteSpec) -> Route:
    """Create or reset the policy on `model`: a canary at `spec.share` to `student`."""
    if spec.share:
        store.require_active(student)
    return store.put_route(
        Route(
            model=model,
            student=student,
            share=spec.share,
            min_logprob=spec.min_logprob,
            shadow=spec.shadow,
            state="canary",
            promote_min=spec.promote_min,
            promote_agreement=spec.promote_agreement,
            auto_promote=spec.auto_promote,
        )
    )


def promote(store: DistillStore, model: str, force: bool = False) -> Route:
    """Every call of `model` to the student, if the online comparison holds (or `force`)."""
    route = store.route(model)
    if not force:
        comparison = store.comparison(model, route.updated_at)
        agreement = comparison.agreement
        if comparison.compared < route.promote_min or agreement is None:
            raise InvalidRequestError(
                f"Only {comparison.compared} calls of '{model}' were answered by both student "
                f"and teacher since the canary started; promotion needs {route.promote_min}. "
                "Raise `shadow`, wait, or pass --force.",
                param="model",
            )
        if agreement < route.promote_agreement:
            raise InvalidRequestError(
                f"The student agreed with the teacher on {agreement:.1%} of {comparison.compared} "
                f"compared calls, under the {route.promote_agreement:.0%} promotion needs; "
                "retrain on the disagreements (`collect.source: feedback`) or pass --force.",
                param="model",
            )
    return store.set_share(model, 1.0, "promoted")


def rollback(store: DistillStore, model: str, version: int | None = None) -> Route:
    """Every call of `model` back to the model itself, at once; with `version`, that earlier
    student version becomes the active one too."""
    route = store.route(model)
    if version is not None:
        store.activate(route.student, version)
    return store.set_share(model, 0.0, "rolled_back")
