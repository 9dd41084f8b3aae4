"""Where a tune's training queries come from (pseudo, or written by a chat model) and the
query-side options (HyDE, multi-query) a search can use. The chat model is the scripted fake."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llmforge.core.errors import InvalidRequestError
from llmforge.kb import Chunk, KnowledgeBases
from llmforge.kb.expansion import expander_for
from llmforge.kb.queries import ModelQueries, PseudoQueries, generator_for
from llmforge.models.fake import FakeChatModel
from tests.kb.test_tune import service_sheets


def chunk(i: int, title: str, text: str) -> Chunk:
    return Chunk(
        id=f"c{i}",
        text=text,
        source=f"/docs/{i}.md",
        title=title,
        file_type="md",
        chunk_index=0,
        content_hash=str(i),
    )


CHUNKS = [
    chunk(0, "Pump Manual", "Replace the impeller seals every 2000 hours. Oil the shaft monthly."),
    chunk(1, "Pump Manual", "Always disconnect power before opening the housing of the pump."),
    chunk(2, "Lease Contract", "The tenant pays the rent on the first day of each month."),
]


async def test_pseudo_queries_ask_titles_that_name_one_document_and_cloze_sentences() -> None:
    found = await PseudoQueries().generate(CHUNKS, random.Random(0))
    titles = [q for q in found if q.kind == "title"]
    assert [q.text for q in titles] == ["Lease Contract"]  # "Pump Manual" names two documents
    assert titles[0].positive == CHUNKS[2].text  # matched by its content, not its title
    spans = [q for q in found if q.kind == "sentence"]
    assert {q.chunk_id for q in spans} == {"c0", "c1", "c2"}
    for q in spans:
        source = next(c for c in CHUNKS if c.id == q.chunk_id)
        assert 3 <= len(q.text.split()) <= 8
        assert all(w in source.text for w in q.text.split())


async def test_model_written_queries_fall_back_to_pseudo_ones_when_unusable() -> None:
    model = FakeChatModel(responses=["Query: seal replacement interval", "", "when is rent due"])
    generator = ModelQueries(model, label="teacher")
    found = await generator.generate(CHUNKS, random.Random(0))
    assert generator.name == "model:teacher" and generator.failures == 1
    by_chunk = {q.chunk_id: q for q in found if q.kind == "model"}
    assert by_chunk["c0"].text == "seal replacement interval"
    assert by_chunk["c2"].text == "when is rent due"
    assert {q.kind for q in found if q.chunk_id == "c1"} <= {"title", "sentence"}
    with pytest.raises(InvalidRequestError, match="needs a chat model"):
        generator_for("model", None, None)


async def test_hyde_searches_the_passage_the_model_writes_next_to_the_query(
    kbs: KnowledgeBases, tmp_path: Path
) -> None:
    kb = await kbs.open("sheets", create=True)
    await kb.ingest([service_sheets(tmp_path / "docs")])
    guess = "The boiler QX-4421 needs its filter cleaned every 130 hours of running."
    hyde = expander_for("hyde", FakeChatModel(responses=[guess]))
    result = await kb.search_detailed("zqxv nothing matches this", k=3, expander=hyde)
    assert Path(result.hits[0].source).name == "boiler-QX-4421.txt"
    assert [s.name for s in result.stages][:3] == ["expand", "dense", "bm25"]
    assert result.stages[0].candidates == 2

    multi = expander_for(
        "multi-query", FakeChatModel(responses=["1. fan QX-4435 seals\n2. fan seal kit\n3. x"])
    )
    result = await kb.search_detailed("zqxv", k=1, expander=multi)
    assert Path(result.hits[0].source).name == "fan-QX-4435.txt"
    assert result.stages[0].candidates == 4
    with pytest.raises(InvalidRequestError, match="Known: hyde, multi-query"):
        expander_for("rag-fusion", FakeChatModel())
