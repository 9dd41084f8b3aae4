"""`KnowledgeBase.tune`: retrieval adapted to a KB's own documents, kept only when its gate passes,
versioned, rolled back, and never half-applied. Real MiniLM (PyTorch backend: no ONNX export per
tuned model), real LanceDB and BM25, tiny corpus, a few training steps."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmforge.core.errors import InvalidRequestError, NotFoundError
from llmforge.kb import KnowledgeBase, KnowledgeBases
from llmforge.kb.finetune import TuneCancelled
from llmforge.kb.queries import PseudoQueries
from llmforge.kb.tune import LabelledQuery, TuneOptions, TuneProgress
from tests.kb.conftest import make_settings

MINILM = {"name": "minilm", "provider": "sentence-transformers", "path": "builtin:all-minilm-l6-v2"}
DEVICES = ["pump", "valve", "compressor", "boiler", "heater", "fan"]


def service_sheets(folder: Path, count: int = 48) -> Path:
    """Service sheets that differ mostly in model codes and numbers: what a user searches by and
    what MiniLM barely tells apart, so the KB's own queries have something to teach."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        device, code = DEVICES[i % len(DEVICES)], f"QX-{4400 + i * 7}"
        (folder / f"{device}-{code}.txt").write_text(
            f"{device.title()} {code} service sheet\n\n"
            f"The {device} {code} needs its filter cleaned every {100 + i * 10} hours of running. "
            f"Replacement seals for the {code} come in kit number K{900 + i}. "
            f"Torque the housing bolts of the {code} to {20 + i} newton metres.\n",
            encoding="utf-8",
        )
    return folder


@pytest.fixture
async def kbs(tmp_path: Path) -> AsyncIterator[KnowledgeBases]:
    bases = KnowledgeBases(make_settings(tmp_path, embedding=MINILM, embedding_backend="torch"))
    yield bases
    await bases.aclose()


@pytest.fixture
async def kb(kbs: KnowledgeBases, tmp_path: Path) -> KnowledgeBase:
    base = await kbs.open("sheets", create=True)
    await base.ingest([service_sheets(tmp_path / "docs")])
    return base


async def top_sources(kb: KnowledgeBase, query: str, k: int = 5) -> list[str]:
    return [Path(h.source).name for h in await kb.search(query, k=k)]


QUERIES = ["seal kit for QX-4421", "boiler filter hours", "torque of the QX-4505 housing"]


async def snapshot(kb: KnowledgeBase) -> list[list[str]]:
    return [await top_sources(kb, q) for q in QUERIES]


async def test_tune_serves_a_fusion_that_beats_the_current_one_on_held_out_queries(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    stages: list[str] = []
    report = await kb.tune(
        TuneOptions(method="fusion"),
        PseudoQueries(),
        progress=lambda p: stages.append(p.stage),
    )
    assert report.accepted and report.version == 1 and report.parent == 0
    assert report.gate.candidate >= report.gate.current + 0.01
    assert report.gate.queries > 0 and "accepted" in report.message
    assert {"sampling", "queries", "retrieving", "fusion", "gate"} <= set(stages)

    active = await kb.active_version()
    assert active.version == 1 and active.fusion == report.candidates[0].fusion
    assert active.lineage is not None and active.lineage.generator == "pseudo"
    assert active.lineage.corpus_chunks == 48 and active.lineage.corpus_fingerprint
    assert active.gate == report.gate
    assert [(v.version, v.status) for v in await kb.versions()] == [(0, "retired"), (1, "active")]
    result = await kb.search_detailed("seal kit for QX-4421", k=3)
    assert result.fusion == active.fusion  # searches use the version's fusion from now on
    saved = json.loads((tmp_path / "kbs" / "sheets" / "versions.json").read_text())
    assert [v["status"] for v in saved["versions"]] == ["retired", "active"]


async def test_gate_refuses_a_candidate_that_gains_too_little_and_keeps_serving(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    before = await snapshot(kb)
    report = await kb.tune(TuneOptions(method="fusion", min_gain=0.5), PseudoQueries())
    assert not report.accepted and report.version is None
    assert report.message.startswith("refused") and f"{report.gate.current:.3f}" in report.message
    assert "unchanged" in report.message
    listed = await kb.versions()
    assert [(v.version, v.status) for v in listed] == [(0, "active"), (1, "discarded")]
    assert listed[1].gate == report.gate  # the refused attempt keeps its figures
    assert (await kb.active_version()).version == 0
    assert await snapshot(kb) == before
    assert not (tmp_path / "kbs" / "sheets" / "versions" / "v1").exists()
    with pytest.raises(InvalidRequestError, match="refused by its gate"):
        await kb.rollback(1)


async def test_a_labelled_set_the_candidate_does_not_improve_vetoes_it(kb: KnowledgeBase) -> None:
    sheet = next(h.source for h in await kb.search("Pump QX-4400 service sheet", k=1))
    labelled = [LabelledQuery(query="Pump QX-4400 service sheet", relevant={sheet: 1})]
    report = await kb.tune(TuneOptions(method="fusion", labelled=labelled), PseudoQueries())
    assert report.gate.gain >= 0.01  # the synthetic gate alone would pass
    assert report.labelled is not None and report.labelled.queries == 1
    assert report.labelled.current == 1.0 and not report.accepted
    assert "labelled set 1.000 -> 1.000" in report.message
    assert (await kb.active_version()).version == 0


async def test_finetuned_embedder_serves_from_new_vectors_and_rollback_catches_up(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    before = await kb.search_detailed("seal kit for QX-4421", k=3, fusion="dense")
    options = TuneOptions(method="finetune", steps=2, batch=4, sample=24, min_gain=-1.0)
    report = await kb.tune(options, PseudoQueries())
    assert report.accepted and report.chosen == "finetune"
    active = await kb.active_version()
    assert active.model == "versions/v1/model" and active.store == "versions/v1/vectors"
    assert active.lineage is not None and active.lineage.steps == 2
    folder = tmp_path / "kbs" / "sheets" / "versions" / "v1"
    assert (folder / "model" / "modules.json").is_file() and (folder / "vectors").is_dir()
    after = await kb.search_detailed("seal kit for QX-4421", k=3, fusion="dense")
    assert len(after.hits) == 3
    assert [h.dense_score for h in after.hits] != [h.dense_score for h in before.hits]

    # A file ingested while v1 serves lands in v1's vectors; rolling back re-embeds it into v0's.
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "chiller.txt").write_text(
        "Chiller ZZ-9 service sheet\n\nThe chiller ZZ-9 runs on glycol.\n", encoding="utf-8"
    )
    await kb.ingest([extra])
    assert (await top_sources(kb, "chiller ZZ-9 glycol", 1)) == ["chiller.txt"]
    restored = await kb.rollback()
    assert restored.version == 0 and restored.status == "active"
    assert (await top_sources(kb, "chiller ZZ-9 glycol", 1)) == ["chiller.txt"]
    dense = await kb.search_detailed("chiller ZZ-9 glycol", k=1, fusion="dense")
    assert Path(dense.hits[0].source).name == "chiller.txt"  # in v0's own vectors too
    assert [(v.version, v.status) for v in await kb.versions()] == [(0, "active"), (1, "retired")]
    with pytest.raises(InvalidRequestError, match="no earlier version"):
        await kb.rollback()
    assert (await kb.rollback(1)).version == 1  # and forward again
    with pytest.raises(NotFoundError, match="Versions you can use: 0, 1"):
        await kb.rollback(7)


async def test_interrupted_tune_leaves_the_old_index_serving(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    before = await snapshot(kb)

    def crash(p: TuneProgress) -> None:
        if p.stage == "reembed":
            raise RuntimeError("power cut")

    options = TuneOptions(method="finetune", steps=2, batch=4, sample=24, min_gain=-1.0)
    with pytest.raises(RuntimeError, match="power cut"):
        await kb.tune(options, PseudoQueries(), progress=crash)
    assert [(v.version, v.status) for v in await kb.versions()] == [(0, "active")]
    assert await snapshot(kb) == before
    versions_folder = tmp_path / "kbs" / "sheets" / "versions"
    assert not versions_folder.exists() or not any(versions_folder.iterdir())

    # A tune stopped from outside (the API's cancel) between training steps ends the same way.
    stop = threading.Event()

    def cancel_at_first_step(p: TuneProgress) -> None:
        if p.stage == "finetune" and p.done >= 1:
            stop.set()

    with pytest.raises(TuneCancelled):
        await kb.tune(options, PseudoQueries(), progress=cancel_at_first_step, stop=stop)
    assert await snapshot(kb) == before

    # Leftovers of a process killed mid-tune are removed by the next tune, which works.
    (versions_folder / "v1" / "model").mkdir(parents=True, exist_ok=True)
    report = await kb.tune(TuneOptions(method="fusion"), PseudoQueries())
    assert report.accepted and report.version == 1
    assert not (versions_folder / "v1" / "model").exists()


async def test_a_second_process_serving_the_kb_switches_to_the_tuned_version(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    other = KnowledgeBases(make_settings(tmp_path, embedding=MINILM, embedding_backend="torch"))
    try:
        elsewhere = await other.open("sheets")
        assert (await elsewhere.search_detailed("boiler filter", k=2)).fusion == "corroborated"
        report = await kb.tune(TuneOptions(method="fusion"), PseudoQueries())
        assert report.accepted
        tuned = (await kb.active_version()).fusion
        assert (await elsewhere.search_detailed("boiler filter", k=2)).fusion == tuned
        await kb.rollback()
        assert (await elsewhere.search_detailed("boiler filter", k=2)).fusion == "corroborated"
    finally:
        await other.aclose()


async def test_one_tune_at_a_time_and_tiny_kbs_are_refused_with_advice(
    kbs: KnowledgeBases, kb: KnowledgeBase, tmp_path: Path
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    class SlowQueries(PseudoQueries):
        async def generate(self, chunks, rng):  # type: ignore[no-untyped-def]
            started.set()
            await release.wait()
            return await super().generate(chunks, rng)

    first = asyncio.create_task(kb.tune(TuneOptions(method="fusion"), SlowQueries()))
    await started.wait()
    with pytest.raises(InvalidRequestError, match="already running"):
        await kb.tune(TuneOptions(method="fusion"), PseudoQueries())
    release.set()
    assert (await first).accepted

    tiny = await kbs.open("tiny", create=True)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text("Just one note.\n", encoding="utf-8")
    await tiny.ingest([tmp_path / "one"])
    with pytest.raises(InvalidRequestError, match="Ingest more files first"):
        await tiny.tune(TuneOptions(), PseudoQueries())
