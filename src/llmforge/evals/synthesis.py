"""Synthetic question/answer cases from a knowledge base, written by a model.

Passages are drawn round-robin across the knowledge base's documents (each document searched by
its own title, restricted to itself), so a few large files do not crowd out the rest. For each
passage the model writes one question answerable from it and the answer, as structured JSON
(grammar-constrained on local models); a passage the model fails on is skipped and counted. Each
case keeps its passage as `context` and the chunk id as `relevant`, so the same dataset serves
answer metrics, faithfulness and retrieval metrics. Generated cases need a human look before
they gate anything; this module does not judge their quality.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from llmforge.core.types import Message
from llmforge.evals.dataset import Case, with_ids
from llmforge.evals.judge import Judge, JudgeError
from llmforge.kb import Hit, KnowledgeBase, SearchFilters
from llmforge.models.base import ChatModel


class QAPair(BaseModel):
    question: str = Field(min_length=5, max_length=300)
    answer: str = Field(min_length=1, max_length=400)


class SynthesisReport(BaseModel):
    cases: list[Case]
    passages: int
    failed: int


def round_robin(groups: Sequence[Sequence[Hit]], n: int) -> list[Hit]:
    """Up to `n` hits taking one from each group in turn, skipping repeated chunks."""
    out: list[Hit] = []
    seen: set[str] = set()
    depth = 0
    while len(out) < n and any(depth < len(g) for g in groups):
        for g in groups:
            if depth < len(g) and g[depth].chunk_id not in seen and len(out) < n:
                seen.add(g[depth].chunk_id)
                out.append(g[depth])
        depth += 1
    return out


async def synthesize(
    kb: KnowledgeBase,
    model: ChatModel,
    n: int,
    *,
    model_name: str = "",
    attempts: int = 3,
    max_tokens: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> SynthesisReport:
    documents = await kb.documents()
    per_doc = max(1, -(-n // max(1, len(documents))))
    groups = [
        await kb.search(d.title or d.source, k=per_doc, filters=SearchFilters(path_prefix=d.source))
        for d in documents
    ]
    passages = round_robin(groups, n)
    writer = Judge(model, attempts=attempts, temperature=0.0, max_tokens=max_tokens)
    cases: list[Case] = []
    failed = 0
    for i, hit in enumerate(passages):
        messages = [
            Message(
                role="system",
                content="You write exam questions. From the PASSAGE, write one specific question "
                "that the passage answers, and its short answer taken from the passage. Reply "
                'with JSON: {"question": "...", "answer": "..."}.',
            ),
            Message(role="user", content=f"PASSAGE:\n{hit.text}"),
        ]
        try:
            pair = await writer.ask(messages, QAPair)
        except JudgeError:
            failed += 1
        else:
            cases.append(
                Case(
                    input=pair.question,
                    expected=pair.answer,
                    context=[hit.text],
                    relevant=[hit.chunk_id],
                    metadata={
                        "source": hit.source,
                        "chunk_id": hit.chunk_id,
                        "kb": kb.name,
                        "synthesized_by": model_name,
                    },
                )
            )
        if progress:
            progress(i + 1, len(passages))
    return SynthesisReport(cases=with_ids(cases), passages=len(passages), failed=failed)
