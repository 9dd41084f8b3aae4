"""Synthesizing Q/A cases from a real knowledge base with a scripted writer model."""

from __future__ import annotations

from pathlib import Path

from llmforge.core.config import ModelConfig
from llmforge.core.settings import load_settings
from llmforge.evals import load_dataset, write_dataset
from llmforge.evals.synthesis import synthesize
from llmforge.kb import KnowledgeBases
from llmforge.models import ModelCatalog

GOOD = '{"question": "How often are the impeller seals replaced?", "answer": "Every 2000 hours"}'


async def test_cases_carry_their_passage_and_chunk_and_failures_are_counted(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pump.md").write_text(
        "# Pump Manual\n\n## Seals\n\nReplace the impeller seals every 2000 hours of running.\n",
        encoding="utf-8",
    )
    (docs / "safety.md").write_text(
        "# Safety\n\nAlways disconnect power before opening the housing.\n", encoding="utf-8"
    )
    settings = load_settings(
        None,
        database=f"sqlite:///{tmp_path / 'kb.db'}",
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 64}],
        kb={"path": str(tmp_path / "kbs")},
    )
    kbs = KnowledgeBases(settings)
    # the writer answers well once, then never in JSON (3 attempts): one case, one failure
    writer = ModelCatalog(
        [ModelConfig(name="w", provider="fake", responses=[GOOD, "no", "no", "no"])], []
    )
    try:
        kb = await kbs.open("manuals", create=True)
        await kb.ingest([docs])
        report = await synthesize(kb, writer.chat("w"), 2, model_name="w")
    finally:
        await kbs.aclose()
        await writer.aclose()
    assert (report.passages, report.failed, len(report.cases)) == (2, 1, 1)
    [case] = report.cases
    assert case.question() == "How often are the impeller seals replaced?"
    assert case.expected == "Every 2000 hours"
    assert len(case.context) == 1 and case.relevant == [case.metadata["chunk_id"]]
    assert case.metadata["kb"] == "manuals" and case.metadata["synthesized_by"] == "w"
    write_dataset(tmp_path / "synth.jsonl", report.cases)
    assert load_dataset(tmp_path / "synth.jsonl").cases == report.cases
