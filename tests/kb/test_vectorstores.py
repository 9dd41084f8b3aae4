"""Every registered VectorStore behaves the same: upsert by id, cosine search, filters, delete,
scan."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmforge.core.config import KBConfig
from llmforge.kb import Chunk, SearchFilters, StoreSpec, VectorStore, vector_stores


def chunk(source: str, index: int, text: str) -> Chunk:
    return Chunk(
        id=f"{source}#{index}",
        text=text,
        source=source,
        title=Path(source).stem,
        heading_path=["H1", "H2"],
        page=index + 1 if source.endswith(".pdf") else None,
        file_type=Path(source).suffix.lstrip("."),
        chunk_index=index,
        content_hash=f"h{index}",
        tokens=3,
    )


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


CHUNKS = [
    chunk("/docs/a/one.md", 0, "alpha"),
    chunk("/docs/a/one.md", 1, "beta"),
    chunk("/docs/b/two.pdf", 0, "gamma"),
    chunk("/docs/ab/three.txt", 0, "delta"),
]
VECTORS = [unit(1, 0, 0, 0), unit(0.9, 0.1, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0)]


@pytest.fixture(params=vector_stores.names())
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    config = KBConfig(path=str(tmp_path))
    if request.param == "pgvector":  # a server by URL: a fresh schema on the test PostgreSQL
        config = KBConfig(path=str(tmp_path), pgvector_url=request.getfixturevalue("pgvector_url"))
    spec = StoreSpec(tmp_path / "kb", "llmforge_kb_test", 4, config)
    (tmp_path / "kb").mkdir()
    made = vector_stores.get(request.param)(spec)
    assert isinstance(made, VectorStore)
    made.upsert(CHUNKS, VECTORS)
    yield made
    made.close()


def test_builtins_are_registered() -> None:
    assert {"lancedb", "qdrant", "pgvector"} <= set(vector_stores.names())


def test_search_returns_nearest_first_with_cosine_scores(store: VectorStore) -> None:
    found = store.search(unit(1, 0, 0, 0), 2)
    assert [c.id for c, _ in found] == ["/docs/a/one.md#0", "/docs/a/one.md#1"]
    assert found[0][1] == pytest.approx(1.0, abs=1e-4)
    assert found[1][1] == pytest.approx(0.9 / math.sqrt(0.82), abs=1e-4)
    first = found[0][0]
    assert first == CHUNKS[0]  # every field round-trips


def test_upsert_with_the_same_ids_replaces_instead_of_duplicating(store: VectorStore) -> None:
    changed = CHUNKS[0].model_copy(update={"text": "alpha v2"})
    store.upsert([changed], [VECTORS[0]])
    store.upsert([changed], [VECTORS[0]])
    chunks = list(store.scan())
    assert len(chunks) == 4
    assert {c.id: c.text for c in chunks}["/docs/a/one.md#0"] == "alpha v2"


def test_filters_by_folder_prefix_and_file_type(store: VectorStore) -> None:
    query = unit(1, 1, 1, 0)
    under_a = store.search(query, 10, SearchFilters(path_prefix="/docs/a"))
    assert {c.source for c, _ in under_a} == {"/docs/a/one.md"}  # not /docs/ab
    pdfs = store.search(query, 10, SearchFilters(file_types=["PDF"]))
    assert [c.id for c, _ in pdfs] == ["/docs/b/two.pdf#0"]
    exact_file = store.search(query, 10, SearchFilters(path_prefix="/docs/ab/three.txt"))
    assert [c.id for c, _ in exact_file] == ["/docs/ab/three.txt#0"]
    both = store.search(query, 10, SearchFilters(path_prefix="/docs", file_types=["md", "txt"]))
    assert len(both) == 3


def test_filtered_search_still_fills_k(store: VectorStore) -> None:
    found = store.search(unit(1, 0, 0, 0), 1, SearchFilters(file_types=["txt"]))
    assert [c.id for c, _ in found] == ["/docs/ab/three.txt#0"]


def test_delete_by_source_and_scan_by_id(store: VectorStore) -> None:
    store.delete(["/docs/a/one.md"])
    assert sorted(c.id for c in store.scan()) == ["/docs/ab/three.txt#0", "/docs/b/two.pdf#0"]
    got = list(store.scan(["/docs/b/two.pdf#0", "missing"]))
    assert [c.id for c in got] == ["/docs/b/two.pdf#0"]


def test_vectors_by_id_are_the_stored_ones(store: VectorStore) -> None:
    got = store.vectors([CHUNKS[1].id, "missing", CHUNKS[3].id])
    assert sorted(got) == sorted([CHUNKS[1].id, CHUNKS[3].id])
    for i in (1, 3):
        assert got[CHUNKS[i].id] == pytest.approx(VECTORS[i], abs=1e-6)
    assert store.vectors([]) == {}


def test_delete_everything_then_start_again(store: VectorStore) -> None:
    store.delete(None)
    assert list(store.scan()) == []
    assert store.search(unit(1, 0, 0, 0), 3) == []
    store.upsert(CHUNKS[:1], VECTORS[:1])
    assert [c.id for c in store.scan()] == ["/docs/a/one.md#0"]
