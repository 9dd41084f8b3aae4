"""The LanceDB store's ANN index: built once a table passes its size threshold, kept up as rows
arrive, and in agreement with exact search (small data, a low threshold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmforge.core.config import KBConfig
from llmforge.kb import Chunk, SearchFilters, StoreSpec
from llmforge.kb.lancedb_store import Ann, LanceDBStore

DIM = 32


def clustered(n: int, seed: int, centers: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, DIM)) * 0.15
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def chunks(start: int, n: int) -> list[Chunk]:
    return [
        Chunk(
            id=f"c{i}",
            text=f"chunk {i}",
            source=f"/docs/{'even' if i % 2 == 0 else 'odd'}/{i // 10}.txt",
            title="t",
            file_type="txt",
            chunk_index=i % 10,
            content_hash=str(i),
        )
        for i in range(start, start + n)
    ]


def store_at(tmp_path: Path, ann: Ann) -> LanceDBStore:
    (tmp_path / "kb").mkdir(exist_ok=True)
    return LanceDBStore(StoreSpec(tmp_path / "kb", "t", DIM, KBConfig(path=str(tmp_path))), ann)


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    return [f"c{i}" for i in np.argsort(-(vectors @ query))[:k]]


def test_ann_index_is_built_past_the_threshold_and_agrees_with_exact_search(
    tmp_path: Path,
) -> None:
    centers = np.random.default_rng(0).standard_normal((12, DIM))
    data = clustered(600, 1, centers)
    store = store_at(tmp_path, Ann(min_rows=400, partition_rows=100, nprobes=3))
    store.upsert(chunks(0, 300), data[:300].tolist())
    assert store.ann_state() is None  # below the threshold: exact only

    store.upsert(chunks(300, 200), data[300:500].tolist())
    assert store.ann_state() == {"trained_rows": 500, "partitions": 5}
    queries = clustered(40, 2, centers)
    recall = np.mean(
        [
            len({c.id for c, _ in store.search(q.tolist(), 10)} & set(exact_top(data[:500], q, 10)))
            / 10
            for q in queries
        ]
    )
    assert recall >= 0.9
    top, score = store.search(data[7].tolist(), 1)[0]
    assert top.id == "c7" and abs(score - 1.0) < 0.02

    # Rows added after the index are found at once (searched exactly next to it), then folded in.
    store.upsert(chunks(500, 100), data[500:].tolist())
    assert store.search(data[555].tolist(), 1)[0][0].id == "c555"
    assert store.ann_state() == {"trained_rows": 500, "partitions": 5}  # folded, not retrained

    # Filtered searches stay exact over the matching rows: k results, all of them matching.
    only_odd = SearchFilters(path_prefix="/docs/odd")
    hits = store.search(queries[0].tolist(), 25, only_odd)
    odd = np.array([i for i in range(600) if i % 2 == 1])
    expected = [f"c{odd[j]}" for j in np.argsort(-(data[odd] @ queries[0]))[:25]]
    assert [c.id for c, _ in hits] == expected

    # Deletes and re-upserts keep working through the scalar indexes.
    store.delete(["/docs/even/0.txt"])
    assert not list(store.scan(["c0", "c2"])) and len(list(store.scan(["c1"]))) == 1
    store.close()


def test_the_index_is_retrained_once_the_table_has_grown_past_its_partitions(
    tmp_path: Path,
) -> None:
    centers = np.random.default_rng(3).standard_normal((8, DIM))
    data = clustered(900, 4, centers)
    store = store_at(tmp_path, Ann(min_rows=200, partition_rows=100, retrain_growth=4.0))
    store.upsert(chunks(0, 200), data[:200].tolist())
    assert store.ann_state() == {"trained_rows": 200, "partitions": 2}
    store.upsert(chunks(200, 700), data[200:].tolist())
    assert store.ann_state() == {"trained_rows": 900, "partitions": 9}
    assert store.search(data[850].tolist(), 1)[0][0].id == "c850"
    store.close()


def segments(store: LanceDBStore) -> tuple[int, int]:
    """(delta segments of the vector index, rows it does not cover yet)."""
    stats = store._open(create=False).index_stats("vector_idx")
    return stats.num_indices, stats.num_unindexed_rows


def test_folds_pile_up_segments_only_so_far_and_a_large_ingest_settles_into_one_index(
    tmp_path: Path,
) -> None:
    centers = np.random.default_rng(5).standard_normal((8, DIM))
    data = clustered(400, 6, centers)
    ann = Ann(
        min_rows=200,
        partition_rows=100,
        fold_rows=10,
        max_write_segments=3,
        max_segments=2,
        settle_share=0.3,
        retrain_growth=100,
    )
    store = store_at(tmp_path, ann)
    store.upsert(chunks(0, 200), data[:200].tolist())
    store.settle()
    assert store.ann_state() == {"trained_rows": 200, "partitions": 2}

    # A small ingest (40 rows in two upserts: the first fold merges into the main index, the
    # second adds a delta segment) does not retrain the partitions.
    store.upsert(chunks(200, 20), data[200:220].tolist())
    store.upsert(chunks(220, 20), data[220:240].tolist())
    store.settle()
    assert segments(store) == (2, 0)
    assert store.ann_state() == {"trained_rows": 200, "partitions": 2}

    # A large one folds every upsert, retrains whenever folds pile up past max_write_segments,
    # and ends, at settle(), as one index over every row.
    for start in range(240, 400, 20):
        store.upsert(chunks(start, 20), data[start : start + 20].tolist())
        assert segments(store)[0] <= ann.max_write_segments
    store.settle()
    assert segments(store) == (1, 0)
    assert store.ann_state() == {"trained_rows": 400, "partitions": 4}
    assert all(store.search(data[i].tolist(), 1)[0][0].id == f"c{i}" for i in (5, 230, 399))
    store.close()
