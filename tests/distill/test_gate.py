"""The gate: student and teacher scored on the test split as evals runs, compared case by case;
a student under the configured share of the teacher's score does not pass."""

from __future__ import annotations

from llmforge.core.db import open_engine
from llmforge.core.types import Message
from llmforge.distill.collect import Example
from llmforge.distill.config import EvalSpec
from llmforge.distill.evaluate import evaluate
from llmforge.evals import EvalStore
from llmforge.models.fake import FakeChatModel


def examples(gold: bool) -> list[Example]:
    labels = ["injection", "benign"] * 5
    return [
        Example(
            id=f"t{i}",
            messages=[Message(role="user", content=f"prompt {i}")],
            label=label,
            reference=("benign" if i == 0 else label) if gold else None,
        )
        for i, label in enumerate(labels)
    ]


async def test_a_student_under_the_share_fails_the_gate(db_url: str) -> None:
    store = EvalStore(open_engine(db_url))
    always_benign = FakeChatModel(["Benign."])
    result = await evaluate(
        examples(gold=False), always_benign, EvalSpec(gate_share=0.9), store, "g1", "teacher"
    )
    assert (result.reference, result.teacher_score, result.student_score) == ("teacher", 1.0, 0.5)
    assert not result.passed and result.ratio == 0.5
    assert (result.losses, result.wins) == (5, 0)
    assert result.ci_high is not None and result.ci_high < 0  # a significant loss
    assert {r.id for r in store.list_runs()} == {"g1-student", "g1-teacher"}


async def test_gold_references_score_the_teacher_too(db_url: str) -> None:
    store = EvalStore(open_engine(db_url))
    result = await evaluate(
        examples(gold=True), FakeChatModel(["benign"]), EvalSpec(gate_share=0.5), store, "g2", "t"
    )
    assert result.reference == "gold"
    assert result.teacher_score == 0.9  # the teacher got case 0 wrong
    assert result.student_score == 0.6 and result.passed  # 0.6 >= 0.5 x 0.9
