"""A teacher that answers from a file: provider `answer-key`.

`path` is a JSONL file of `{"text": ..., "label": ...}` lines; asked about a conversation whose
last user turn is one of the texts, the model answers that text's label (anything else: the
`responses[0]` of its config, else "unknown"). It stands in for a teacher whose answers are already
known: human labels, or a benchmark's perfect teacher billed at a hosted model's list price
(`price` in its config). Token counts are estimated at 4 characters a token, so the bill is of the
right size without a tokenizer; `delay_s` adds a fixed latency per call.

It does not stream token by token, call tools or return log-probabilities.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, InvalidRequestError
from llmforge.core.types import Completion, Delta, Message, Sampling, Usage
from llmforge.models.base import ModelContext

PROVIDER = "answer-key"


def estimated_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


class AnswerKeyModel:
    def __init__(self, answers: dict[str, str], default: str, delay_s: float = 0.0) -> None:
        self.answers = answers
        self.default = default
        self.delay_s = delay_s

    @classmethod
    def from_file(
        cls, path: Path, default: str = "unknown", delay_s: float = 0.0
    ) -> AnswerKeyModel:
        if not path.is_file():
            raise ConfigError(f"provider answer-key: '{path}' does not exist (a JSONL file)")
        answers: dict[str, str] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                answers[str(row["text"]).strip()] = str(row["label"])
            except (ValueError, KeyError, TypeError):
                raise ConfigError(
                    f"provider answer-key: {path.name} line {number}: needs `text` and `label`"
                ) from None
        return cls(answers, default, delay_s)

    async def complete(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        if sampling.calls_tools or sampling.logprobs or sampling.n > 1:
            raise InvalidRequestError(
                "the answer-key model answers text only: no tools, logprobs or n > 1",
                param="tools" if sampling.calls_tools else "logprobs",
            )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        question = next((m.content for m in reversed(messages) if m.role == "user"), "")
        answer = self.answers.get(question.strip(), self.default)
        prompt = sum(estimated_tokens(m.content) for m in messages)
        return Completion(
            text=answer,
            usage=Usage(prompt_tokens=prompt, completion_tokens=estimated_tokens(answer)),
        )

    async def stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        answer = await self.complete(messages, sampling)
        yield Delta(text=answer.text)
        yield Delta(finish_reason="stop", usage=answer.usage)

    async def aclose(self) -> None:
        return None


def create(config: ModelConfig, context: ModelContext | None = None) -> AnswerKeyModel:
    if not config.path:
        raise ConfigError(f"model '{config.name}': provider answer-key needs `path` (a JSONL file)")
    default = config.responses[0] if config.responses else "unknown"
    return AnswerKeyModel.from_file(Path(config.path).expanduser(), default, config.delay_s)
