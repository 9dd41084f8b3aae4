"""An LLM as judge: structured judgements with retries, and the judge metrics built on it.

`Judge.ask(messages, Schema)` asks the injected chat model for a JSON object matching a pydantic
model. The schema travels in `Sampling.response_format`, so a llama.cpp judge is grammar-constrained
and an OpenAI-compatible one gets `response_format`; whatever comes back is still parsed and
validated here. A malformed answer is retried, the model shown what was wrong; after `attempts`
tries a `JudgeError` is raised, which the metrics record as the case's error, never as a silent 0.

Metrics (value in [0, 1]; each may sample the judge `samples` times: `value` is the mean,
`samples` each one, so reports show the spread):

- `rubric` (G-Eval style): reasoning, then a 1-5 grade against criteria (`--rubric`, a case's
  `metadata.rubric`, or "correct and complete compared with the reference"); value (grade-1)/4.
- `faithfulness`: the judge lists the answer's claims and marks each supported by the case's
  `context` or not; value = supported / claims (1 when there are no claims).
- `answer_relevancy`: a 1-5 grade of how directly the answer addresses the question.
- `pairwise`: the answer against the reference (`expected`) in both orders, alternating by sample
  to cancel position bias; 1 = the answer wins, 0.5 a tie, 0 the reference wins.

This module does not choose the judge model: it is given one.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from llmforge.core.errors import LLMForgeError, ModelError
from llmforge.core.types import Message, ResponseFormat, Sampling
from llmforge.evals.base import Metric, MetricOptions, Output, Score
from llmforge.evals.dataset import Case
from llmforge.evals.metrics import NO_EXPECTED
from llmforge.models.base import ChatModel

T = TypeVar("T", bound=BaseModel)

DEFAULT_CRITERIA = (
    "The answer is correct and complete compared with the reference answer and states nothing "
    "false. If there is no reference, judge correctness by general knowledge."
)


class JudgeError(ModelError):
    """The judge gave no valid judgement within its attempts (recorded per case, not raised to the
    user)."""


class Rating(BaseModel):
    reasoning: str = Field(max_length=400, description="brief, step by step")
    score: Literal[1, 2, 3, 4, 5] = Field(description="1 = fails, 5 = fully meets")


class Claim(BaseModel):
    claim: str = Field(max_length=300)
    supported: bool


class Claims(BaseModel):
    claims: list[Claim] = Field(max_length=12)


class Preference(BaseModel):
    reasoning: str = Field(max_length=400)
    winner: Literal["A", "B", "tie"]


def extract_json(text: str) -> Any:
    """The JSON object in a judge's answer: the whole text, a ``` fence, or the outermost braces."""
    stripped = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)\s*```", stripped, re.DOTALL)
    for candidate in (stripped, fenced.group(1) if fenced else None):
        if candidate:
            try:
                return json.loads(candidate)
            except json.JSONDecodeError:
                pass
    start, end = stripped.find("{"), stripped.rfind("}")
    if 0 <= start < end:
        return json.loads(stripped[start : end + 1])
    raise ValueError("no JSON object in the answer")


class Judge:
    """A chat model asked for structured verdicts."""

    def __init__(
        self,
        model: ChatModel,
        *,
        attempts: int = 3,
        temperature: float | None = 0.0,
        max_tokens: int = 256,
    ) -> None:
        self.model = model
        self.attempts = max(1, attempts)
        self.temperature = temperature
        self.max_tokens = max_tokens

    async def ask(self, messages: Sequence[Message], schema: type[T], seed: int | None = None) -> T:
        sampling = Sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=seed,
            response_format=ResponseFormat.for_schema(schema.model_json_schema()),
        )
        conversation = list(messages)
        problem, text = "", ""
        for _ in range(self.attempts):
            try:
                text = (await self.model.complete(conversation, sampling)).text
            except LLMForgeError as e:
                problem = f"the judge model failed: {e.message}"
                continue
            try:
                return schema.model_validate(extract_json(text))
            except (ValueError, ValidationError) as e:
                problem = _short(e)
            conversation = [
                *messages,
                Message(role="assistant", content=text),
                Message(
                    role="user",
                    content=f"That is not a valid answer ({problem}). Reply with only a JSON "
                    f"object matching this schema: {json.dumps(sampling.json_schema)}",
                ),
            ]
        raise JudgeError(
            f"no valid judgement in {self.attempts} attempts: {problem}; "
            f"last answer: {text[:160]!r}"
        )


def _short(e: Exception) -> str:
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'answer'}: {first['msg']}"
    return str(e)


async def _sampled(n: int, one: Callable[[int], Awaitable[tuple[float, dict[str, Any]]]]) -> Score:
    """Run a judgement `n` times; the mean of those that succeeded, each sample, the errors."""
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    values: list[float] = []
    details: list[dict[str, Any]] = []
    errors: list[str] = []
    for r in results:
        if isinstance(r, JudgeError):
            errors.append(r.message)
        elif isinstance(r, BaseException):
            raise r
        else:
            values.append(r[0])
            details.append(r[1])
    if not values:
        return Score.failed(errors[0])
    extra: dict[str, Any] = {"judgements": details}
    if errors:
        extra["sample_errors"] = errors
    return Score(value=sum(values) / len(values), samples=values, details=extra)


class _JudgeMetric:
    name = ""

    def __init__(self, options: MetricOptions) -> None:
        temperature = options.judge_temperature
        if temperature is None:
            temperature = 0.0 if options.samples == 1 else 0.7
        self.judge = Judge(
            options.need_judge(self.name),
            attempts=options.judge_attempts,
            temperature=temperature,
            max_tokens=options.judge_max_tokens,
        )
        self.samples = max(1, options.samples)
        self.rubric = options.rubric

    def seed(self, i: int) -> int | None:
        return i if self.samples > 1 else None

    async def rate(self, messages: list[Message]) -> Score:
        """A 1-5 `Rating` of `messages`, sampled `samples` times, mapped onto 0-1."""

        async def one(i: int) -> tuple[float, dict[str, Any]]:
            r = await self.judge.ask(messages, Rating, self.seed(i))
            return (r.score - 1) / 4, r.model_dump()

        return await _sampled(self.samples, one)


class RubricMetric(_JudgeMetric):
    name = "rubric"

    async def score(self, case: Case, output: Output) -> Score:
        criteria = str(case.metadata.get("rubric") or self.rubric or DEFAULT_CRITERIA)
        reference = f"\n\nREFERENCE ANSWER:\n{case.expected}" if case.expected else ""
        messages = [
            Message(
                role="system",
                content="You are a strict evaluator. Judge the ANSWER against the CRITERIA. "
                "First reason briefly, then grade from 1 (fails the criteria) to 5 (fully meets "
                'them). Reply with JSON: {"reasoning": "...", "score": 1-5}.',
            ),
            Message(
                role="user",
                content=f"CRITERIA:\n{criteria}\n\nQUESTION:\n{case.question()}{reference}\n\n"
                f"ANSWER:\n{output.text}",
            ),
        ]
        return await self.rate(messages)


class AnswerRelevancyMetric(_JudgeMetric):
    name = "answer_relevancy"

    async def score(self, case: Case, output: Output) -> Score:
        messages = [
            Message(
                role="system",
                content="You rate how directly and completely an ANSWER addresses the QUESTION, "
                "regardless of whether it is true: 1 = off-topic or evasive, 5 = addresses "
                'exactly what was asked. Reply with JSON: {"reasoning": "...", "score": 1-5}.',
            ),
            Message(role="user", content=f"QUESTION:\n{case.question()}\n\nANSWER:\n{output.text}"),
        ]
        return await self.rate(messages)


class FaithfulnessMetric(_JudgeMetric):
    name = "faithfulness"

    async def score(self, case: Case, output: Output) -> Score:
        if not case.context:
            return Score.failed("the case has no `context` to check the answer against")
        context = "\n\n".join(f"[{i}] {c}" for i, c in enumerate(case.context, start=1))
        messages = [
            Message(
                role="system",
                content="Split the ANSWER into its factual claims. For each, say whether the "
                "CONTEXT supports it (true) or not (false). Use only the CONTEXT, not your own "
                'knowledge. Reply with JSON: {"claims": [{"claim": "...", "supported": true}]}.',
            ),
            Message(role="user", content=f"CONTEXT:\n{context}\n\nANSWER:\n{output.text}"),
        ]

        async def one(i: int) -> tuple[float, dict[str, Any]]:
            r = await self.judge.ask(messages, Claims, self.seed(i))
            if not r.claims:
                return 1.0, {"claims": []}
            supported = sum(c.supported for c in r.claims)
            return supported / len(r.claims), r.model_dump()

        return await _sampled(self.samples, one)


class PairwiseMetric(_JudgeMetric):
    name = "pairwise"

    async def score(self, case: Case, output: Output) -> Score:
        if case.expected is None:
            return Score.failed(NO_EXPECTED)
        expected = case.expected

        async def one(i: int) -> tuple[float, dict[str, Any]]:
            swapped = i % 2 == 1
            a, b = (expected, output.text) if swapped else (output.text, expected)
            messages = [
                Message(
                    role="system",
                    content="Compare two answers to the QUESTION. Prefer the one that is more "
                    "correct, complete and helpful; length is not a merit. Reply with JSON: "
                    '{"reasoning": "...", "winner": "A" | "B" | "tie"}.',
                ),
                Message(
                    role="user",
                    content=f"QUESTION:\n{case.question()}\n\nANSWER A:\n{a}\n\nANSWER B:\n{b}",
                ),
            ]
            r = await self.judge.ask(messages, Preference, self.seed(i))
            ours = "B" if swapped else "A"
            value = 0.5 if r.winner == "tie" else (1.0 if r.winner == ours else 0.0)
            return value, {**r.model_dump(), "answer_was": ours}

        return await _sampled(self.samples, one)


def rubric_metric(options: MetricOptions) -> Metric:
    return RubricMetric(options)


def faithfulness_metric(options: MetricOptions) -> Metric:
    return FaithfulnessMetric(options)


def answer_relevancy_metric(options: MetricOptions) -> Metric:
    return AnswerRelevancyMetric(options)


def pairwise_metric(options: MetricOptions) -> Metric:
    return PairwiseMetric(options)
