"""The pgvector store beyond the shared conformance tests (tests/kb/test_vectorstores.py): a
whole knowledge base on PostgreSQL for both its manifest and its vectors, filtered searches that
still fill k once the HNSW index is in play, and clear errors for a missing or wrong URL.

Runs against the PostgreSQL with pgvector named by LLMFORGE_TEST_PGVECTOR_URL (`make test` starts
one); skipped without it."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmforge.core.config import KBConfig
from llmforge.core.errors import ConfigError
from llmforge.core.settings import load_settings
from llmforge.kb import Chunk, KnowledgeBases, SearchFilters, StoreSpec, vector_stores
from llmforge.kb.pgvector_store import PgVectorStore, table_name


def chunk(i: int, source: str) -> Chunk:
    return Chunk(
        id=f"{source}#{i}",
        text=f"text {i}",
        source=source,
        title="t",
        file_type=Path(source).suffix.lstrip("."),
        chunk_index=i,
        content_hash=f"h{i}",
    )


def random_unit(rng: random.Random, n: int) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(n)]
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def test_filtered_search_fills_k_when_few_rows_match_among_many(
    pgvector_url: str, tmp_path: Path
) -> None:
    """3,000 chunks, 8 of them PDFs: an HNSW scan that filtered its first candidates would return
    none of them here; the store must return all 8, nearest first, as an exact search would."""
    rng = random.Random(7)
    # the planner scans the index only on big tables; make it do so on this small one
    url = sa.make_url(pgvector_url)
    url = url.update_query_dict({"options": url.query["options"] + " -cenable_seqscan=off"})
    config = KBConfig(pgvector_url=url.render_as_string(hide_password=False))
    store = vector_stores.get("pgvector")(StoreSpec(tmp_path, "llmforge_kb_many", 16, config))
    chunks = [chunk(i, f"/d/{i % 50}/f.md") for i in range(2992)]
    chunks += [chunk(i, f"/pdfs/p{i}.pdf") for i in range(8)]
    vectors = [random_unit(rng, 16) for _ in chunks]
    store.upsert(chunks, vectors)
    query = random_unit(rng, 16)
    found = store.search(query, 8, SearchFilters(file_types=["pdf"]))
    assert sorted(c.id for c, _ in found) == sorted(c.id for c in chunks[-8:])
    scores = [s for _, s in found]
    assert scores == sorted(scores, reverse=True)
    exact = sorted(
        (sum(a * b for a, b in zip(query, v, strict=True)) for v in vectors[-8:]), reverse=True
    )
    assert scores == pytest.approx(exact, abs=1e-4)
    under = store.search(query, 5, SearchFilters(path_prefix="/d/7"))
    assert len(under) == 5 and {c.source for c, _ in under} == {"/d/7/f.md"}
    assert len(list(store.scan())) == 3000  # paged by id
    store.close()


async def test_a_knowledge_base_on_postgresql_for_rows_and_vectors(
    pgvector_url: str, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pump.md").write_text("# Pump\n\nReplace the impeller seals every 2000 hours.\n")
    (docs / "garden.txt").write_text("Water the orchids twice a week with rainwater.\n")
    settings = load_settings(
        None,
        database=pgvector_url,  # the manifest in the same PostgreSQL
        embeddings=[{"name": "hash", "provider": "fake", "dimensions": 64}],
        kb={"path": str(tmp_path / "kbs"), "store": "pgvector", "pgvector_url": pgvector_url},
    )
    bases = KnowledgeBases(settings)
    try:
        kb = await bases.open("manuals", create=True)
        report = await kb.ingest([docs])
        assert len(report.added) == 2
        again = await kb.ingest([docs])
        assert again.chunks_embedded == 0 and len(again.unchanged) == 2
        keyword = await kb.search_detailed("impeller seals", k=1, fusion="bm25")
        assert keyword.hits[0].source == str(docs / "pump.md")
        dense = await kb.search_detailed("impeller seals", k=5, fusion="dense")
        assert {h.source for h in dense.hits} == {str(docs / "pump.md"), str(docs / "garden.txt")}
        (docs / "garden.txt").unlink()
        assert (await kb.ingest([docs])).removed == [str(docs / "garden.txt")]
        assert [d.source for d in await kb.documents()] == [str(docs / "pump.md")]
    finally:
        await bases.aclose()


def test_missing_or_wrong_url_is_a_config_error_that_says_what_to_set(tmp_path: Path) -> None:
    spec = StoreSpec(tmp_path, "llmforge_kb_x", 4, KBConfig())
    with pytest.raises(ConfigError, match=r"kb\.pgvector_url"):
        PgVectorStore(spec)
    wrong = StoreSpec(tmp_path, "c", 4, KBConfig(pgvector_url=f"sqlite:///{tmp_path}/x.db"))
    with pytest.raises(ConfigError, match="not a PostgreSQL URL"):
        PgVectorStore(wrong)


def test_collection_names_become_distinct_identifiers() -> None:
    assert table_name("llmforge_kb_docs") == "llmforge_kb_docs"
    odd = ["llmforge_kb_Docs", "llmforge_kb_docs-2", "llmforge_kb_" + "x" * 80]
    names = [table_name(n) for n in odd]
    assert len(set(names)) == 3
    assert all(len(n) <= 63 and n == n.lower() for n in names)
    assert table_name("llmforge_kb_" + "x" * 80) != table_name("llmforge_kb_" + "x" * 81)
