"""Fusion beats its parts' blind spots, and a configured reranker demonstrably runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmforge.core.errors import InvalidRequestError, UnknownNameError
from llmforge.kb import KnowledgeBases
from llmforge.kb.bm25 import terms
from llmforge.kb.fusion import FUSIONS, corroborated, rrf, zscore
from llmforge.kb.search import candidates
from llmforge.kb.types import SearchResult
from tests.kb.conftest import make_settings, tiny_cross_encoder


def test_bm25_terms_stem_english_and_bigram_chinese_in_mixed_text() -> None:
    assert terms("The running dogs 向量数据库 ok") == [
        "run",
        "dog",
        "向量",
        "量数",
        "数据",
        "据库",
        "ok",
    ]
    assert terms("中") == ["中"]


def test_zscore_fusion_lets_a_clear_keyword_winner_through_but_dense_leads() -> None:
    dense = [("a", 0.60), ("c", 0.58), ("b", 0.50), ("d", 0.40)]  # dense: a and c close
    bm25 = [("c", 12.0), ("a", 1.0), ("b", 0.9)]  # BM25: c stands far out
    assert zscore(dense, bm25, 0.7)[0][0] == "c"
    clear_dense = [("a", 0.9), ("b", 0.3), ("c", 0.29), ("d", 0.28)]
    flat_bm25 = [("b", 1.01), ("c", 1.0), ("d", 0.99)]
    assert zscore(clear_dense, flat_bm25, 0.7)[0][0] == "a"


def test_corroborated_fusion_trusts_bm25_as_far_as_the_retrievers_agree() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("e", 0.5), ("f", 0.4)]
    disjoint = [("x", 30.0), ("y", 2.0)]  # keyword matches about something else: dense decides
    assert [i for i, _ in corroborated(dense, disjoint)] == ["a", "b", "c", "d", "e", "f", "x", "y"]
    one = [("f", 30.0), ("a", 2.0)]  # one of five shared: BM25 weighs 0.1
    assert corroborated(dense, one) == zscore(dense, one, 0.9)
    full = [(i, 10.0 - n) for n, i in enumerate("edcba")]  # all five shared: an even mix
    assert corroborated(dense, full) == zscore(dense, full, 0.5)


def test_every_fusion_ranks_each_candidate_once() -> None:
    dense = [("a", 0.9), ("b", 0.5)]
    bm25 = [("b", 3.0), ("c", 1.0)]
    expected = {
        "corroborated": "abc",
        "zscore": "abc",
        "minmax": "abc",
        "rrf": "abc",
        "dense": "ab",
        "bm25": "bc",
    }
    for name, fuse in FUSIONS.items():
        ids = [i for i, _ in fuse(dense, bm25, 0.7)]
        assert len(ids) == len(set(ids))
        assert "".join(sorted(ids)) == expected[name]
    assert next(i for i, _ in rrf(dense, bm25)) == "b"  # in both lists


def test_each_retriever_contributes_enough_candidates_for_k() -> None:
    assert candidates(1) == 40
    assert candidates(20) == 80


async def test_configured_reranker_runs_and_shows_in_the_explanation(tmp_path: Path) -> None:
    model = tiny_cross_encoder(tmp_path / "reranker")
    settings = make_settings(tmp_path, reranker={"path": str(model), "candidates": 8})
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        (folder / f"n{i}.txt").write_text(f"Reranking note {i} on topic {i % 4}.", "utf-8")
    kbs = KnowledgeBases(settings)
    try:
        kb = await kbs.open("rr", create=True)
        await kb.ingest([folder])
        result = await kb.search_detailed("reranking topic", k=5)
        assert [s.name for s in result.stages] == ["dense", "bm25", "fusion", "rerank"]
        assert result.stages[-1].candidates == 8
        assert len(result.hits) == 5
        assert all(h.rerank_score is not None for h in result.hits)
        assert [h.score for h in result.hits] == [h.rerank_score for h in result.hits]
        assert [h.rerank_score for h in result.hits] == sorted(
            (h.rerank_score for h in result.hits if h.rerank_score is not None), reverse=True
        )
        assert len(await kb.search("reranking topic", k=10)) == 10  # k above candidates
    finally:
        await kbs.aclose()


async def test_feedback_pulls_up_what_the_top_results_share_with_no_query_word(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = {
        "a": "orchard apples cider",  # the one match of the query
        "b": "apples cider press",  # no query word, two words of the match
        "c": "granite quarry stone",
        "d": "violin concerto strings",
    }
    for name, text in texts.items():
        (folder / f"{name}.txt").write_text(text, "utf-8")
    kbs = KnowledgeBases(make_settings(tmp_path))
    try:
        kb = await kbs.open("fb", create=True)
        await kb.ingest([folder])

        def dense(result: SearchResult) -> dict[str, float]:
            return {Path(h.source).stem: h.dense_score or 0.0 for h in result.hits}

        plain = await kb.search_detailed("orchard", k=4, fusion="dense")
        assert [s.name for s in plain.stages] == ["dense", "bm25", "fusion"]
        moved = await kb.search_detailed("orchard", k=4, fusion="dense", feedback=1)
        assert [s.name for s in moved.stages] == ["dense", "feedback", "bm25", "fusion"]
        assert moved.stages[1].detail == "query moved 0.3 towards top 1"
        assert Path(moved.hits[0].source).stem == "a"
        assert Path(moved.hits[1].source).stem == "b"
        before, after = dense(plain), dense(moved)
        assert after["b"] > before["b"] + 0.1
        assert after["b"] > max(after["c"], after["d"]) + 0.1
        assert after["a"] > before["a"]  # the query moved towards its first result

        with pytest.raises(InvalidRequestError, match="feedback must be between 0 and 50"):
            await kb.search_detailed("orchard", feedback=51)
    finally:
        await kbs.aclose()


async def test_configured_feedback_applies_to_every_search_and_zero_turns_it_off(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("plain text", "utf-8")
    kbs = KnowledgeBases(make_settings(tmp_path, search={"feedback": 3, "feedback_weight": 0.5}))
    try:
        kb = await kbs.open("fb", create=True)
        await kb.ingest([tmp_path / "a.txt"])
        result = await kb.search_detailed("plain", k=1)
        assert [s.name for s in result.stages] == ["dense", "feedback", "bm25", "fusion"]
        assert result.stages[1].detail == "query moved 0.5 towards top 3"
        off = await kb.search_detailed("plain", k=1, feedback=0)
        assert "feedback" not in [s.name for s in off.stages]
    finally:
        await kbs.aclose()


async def test_without_a_reranker_no_rerank_stage_runs(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain text", "utf-8")
    kbs = KnowledgeBases(make_settings(tmp_path))
    try:
        kb = await kbs.open("plain", create=True)
        await kb.ingest([tmp_path / "a.txt"])
        result = await kb.search_detailed("plain", k=1)
        assert [s.name for s in result.stages] == ["dense", "bm25", "fusion"]
        assert result.hits[0].rerank_score is None
        assert result.fusion == "corroborated"
    finally:
        await kbs.aclose()


def test_unknown_store_or_reranker_names_fail_listing_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="Known: lancedb, pgvector, qdrant"):
        KnowledgeBases(make_settings(tmp_path, store="chroma"))
    with pytest.raises(UnknownNameError, match="Known: cross-encoder"):
        KnowledgeBases(make_settings(tmp_path, reranker={"provider": "cohere", "path": "x"}))


async def test_qdrant_store_works_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "q.md").write_text(
        "# Q\n\nQdrant keeps vectors.\n\n## More\n\nAnd payloads.", "utf-8"
    )
    kbs = KnowledgeBases(make_settings(tmp_path, store="qdrant"))
    try:
        kb = await kbs.open("q", create=True)
        await kb.ingest([tmp_path / "q.md"])
        hits = await kb.search("payloads", k=1)
        assert hits[0].heading_path == ["Q", "More"]
        await kbs.delete("q")
        assert await kbs.list() == []
    finally:
        await kbs.aclose()
