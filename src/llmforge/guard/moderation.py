"""Moderation policy: topics a deployment refuses, and the keyword guard.

`ModerationGuard` refuses texts on configured topics (`topics: [{name, examples: [...]}]`). By
default it compares the text's embedding with the topics' example sentences (cosine similarity;
`threshold`, default 0.55, is the similarity from which a text is on a topic). With `judge: MODEL`
it asks that chat model instead, one short question per text, and reads a yes/no answer. Its
usual action is `refuse`: the caller gets the configured `refusal` text instead of an answer.

`KeywordGuard` hits on any of its `keywords` (case-insensitive, whole words): the plainest guard
there is, and the baseline `bench/guard.py` measures the classifier against (without `keywords`
it uses a stock list of injection phrases). Neither guard learns: the trained one is
injection.py.
"""

from __future__ import annotations

import re

import numpy as np

from llmforge.core.config import GuardSpec
from llmforge.core.errors import ConfigError
from llmforge.core.types import Message, Sampling
from llmforge.guard.base import GuardContext, Span, Verdict, Where, allow
from llmforge.guard.injection import builtin_embedder
from llmforge.models.base import ChatModel, Embedder

INJECTION_KEYWORDS = (
    "ignore", "disregard", "forget", "instructions", "system prompt", "jailbreak", "DAN",
    "pretend", "act as", "developer mode", "vergiss", "ignoriere", "anweisungen", "no restrictions",
    "override", "bypass",
)  # fmt: skip
JUDGE_PROMPT = (
    "You check messages against a deployment's policy. Refused topics: {topics}.\n"
    "Is the following message about one of the refused topics? Answer with one word, yes or no."
    "\n\nMessage:\n{text}"
)


class ModerationGuard:
    def __init__(self, spec: GuardSpec, context: GuardContext) -> None:
        if not spec.topics:
            raise ConfigError(f"guard '{spec.name}': type moderation needs `topics`")
        self.name = spec.name
        self.action = spec.action
        self.topics = spec.topics
        self.threshold = spec.threshold if spec.threshold is not None else 0.55
        self.judge: ChatModel | None = None
        self.embedder: Embedder | None = None
        self._own = False
        if spec.judge is not None:
            if context.chat is None:
                raise ConfigError(f"guard '{spec.name}': no chat models to judge with")
            self.judge = context.chat(spec.judge)
        elif spec.embedding is not None and context.embedder is not None:
            self.embedder = context.embedder(spec.embedding)
        else:
            self.embedder, self._own = builtin_embedder(), True
        self._examples: np.ndarray | None = None
        self._labels = [t.name for t in self.topics for _ in t.examples]

    async def check(self, text: str, where: Where) -> Verdict:
        if not text.strip():
            return allow(self.name)
        if self.judge is not None:
            return await self._judged(text)
        assert self.embedder is not None
        if self._examples is None:
            sentences = [e for t in self.topics for e in t.examples]
            self._examples = np.asarray((await self.embedder.embed(sentences)).vectors)
        vector = np.asarray((await self.embedder.embed([text])).vectors[0])
        similarity = self._examples @ vector
        best = int(np.argmax(similarity))
        score = float(similarity[best])
        if score < self.threshold:
            return allow(self.name, score, "classifier")
        return self._hit(score, self._labels[best], "classifier")

    async def _judged(self, text: str) -> Verdict:
        assert self.judge is not None
        topics = ", ".join(t.name for t in self.topics)
        prompt = JUDGE_PROMPT.format(topics=topics, text=text[:4000])
        answer = await self.judge.complete(
            [Message(role="user", content=prompt)], Sampling(max_tokens=5, temperature=0)
        )
        if answer.text.strip().lower().startswith("yes"):
            return self._hit(1.0, topics, "judge")
        return allow(self.name, 0.0, "judge")

    def _hit(self, score: float, topic: str, stage: str) -> Verdict:
        return Verdict(
            guard=self.name,
            action=self.action,
            score=score,
            code="content_policy",
            reason=f"the text is about a topic this deployment refuses ({topic})",
            stage=stage,
        )

    async def aclose(self) -> None:
        if self._own and self.embedder is not None:
            await self.embedder.aclose()


class KeywordGuard:
    def __init__(self, spec: GuardSpec) -> None:
        self.name = spec.name
        self.action = spec.action
        words = spec.keywords or list(INJECTION_KEYWORDS)
        self.pattern = re.compile(
            r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE
        )

    async def check(self, text: str, where: Where) -> Verdict:
        spans = tuple(
            Span(start=m.start(), end=m.end(), kind="keyword") for m in self.pattern.finditer(text)
        )
        if not spans:
            return allow(self.name, stage="rules")
        found = ", ".join(sorted({text[s.start : s.end].lower() for s in spans}))
        return Verdict(
            guard=self.name,
            action=self.action,
            score=1.0,
            code="keyword",
            reason=f"the text holds a refused word ({found})",
            spans=spans,
            stage="rules",
        )

    async def aclose(self) -> None:
        return None


def create(spec: GuardSpec, context: GuardContext) -> ModerationGuard:
    return ModerationGuard(spec, context)


def create_keywords(spec: GuardSpec, context: GuardContext) -> KeywordGuard:
    return KeywordGuard(spec)
