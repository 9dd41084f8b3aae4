"""Ingest real files of every type, keep the KB in sync incrementally, survive being killed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from llmforge.core.errors import InvalidRequestError, NotFoundError
from llmforge.kb import KnowledgeBases, SearchFilters
from tests.kb.conftest import make_settings, minilm, write_corpus


@pytest.mark.slow
async def test_every_supported_type_is_ingested_and_searchable_with_minilm(
    tmp_path: Path, onnx_cache: Path
) -> None:
    files = write_corpus(tmp_path / "docs")
    kbs = KnowledgeBases(make_settings(tmp_path, embedding=minilm(onnx_cache)))
    try:
        kb = await kbs.open("manuals", create=True)
        report = await kb.ingest([tmp_path / "docs"])
        assert sorted(report.added) == sorted(str(p) for p in files.values())
        assert report.skipped == [str(tmp_path / "docs" / "image.png")]
        assert report.failed == []

        async def top(query: str) -> str:
            return (await kb.search(query, k=1))[0].source

        assert await top("how often to replace impeller seals") == str(files["md"])
        assert await top("watering orchids") == str(files["html"])
        assert await top("what does a warranty claim need") == str(files["pdf"])
        assert await top("when is the security deposit returned") == str(files["docx"])
        assert await top("chain oil after rain") == str(files["plain"])

        seals = (await kb.search("impeller seals", k=1))[0]
        assert seals.title == "Pump Manual"
        assert seals.heading_path == ["Pump Manual", "Maintenance", "Seals"]
        claim = (await kb.search("original receipt serial number", k=1))[0]
        assert claim.page == 2
        assert (await kb.info()).documents == len(files)
    finally:
        await kbs.aclose()


@pytest.mark.slow
async def test_chinese_query_finds_the_gbk_encoded_chinese_document(
    tmp_path: Path, onnx_cache: Path
) -> None:
    files = write_corpus(tmp_path / "docs")
    kbs = KnowledgeBases(make_settings(tmp_path, embedding=minilm(onnx_cache)))
    try:
        kb = await kbs.open("zh", create=True)
        await kb.ingest([tmp_path / "docs"])
        hits = await kb.search("中文检索", k=3)
        assert hits[0].source == str(files["txt"])
        assert "知识库支持中文检索" in hits[0].text
        assert hits[0].bm25_score is not None
    finally:
        await kbs.aclose()


async def test_changed_file_is_the_only_one_reembedded(kbs: KnowledgeBases, tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "docs")
    kb = await kbs.open("inc", create=True)
    first = await kb.ingest([tmp_path / "docs"])
    assert len(first.added) == len(files)

    again = await kb.ingest([tmp_path / "docs"])
    assert again.chunks_embedded == 0 and again.added == [] and again.updated == []
    assert len(again.unchanged) == len(files)

    files["plain"].write_text(
        "Bicycle chains need wax, not oil.\n\nA second paragraph about gears.", encoding="utf-8"
    )
    third = await kb.ingest([tmp_path / "docs"])
    assert third.updated == [str(files["plain"])]
    assert third.added == []
    assert len(third.unchanged) == len(files) - 1
    doc = next(d for d in await kb.documents() if d.source == str(files["plain"]))
    assert third.chunks_embedded == doc.chunks
    hits = await kb.search("bicycle chains wax", k=1)
    assert hits[0].source == str(files["plain"]) and "wax" in hits[0].text
    old = await kb.search_detailed("chains oil rain", k=10, fusion="bm25")
    assert all("rain" not in h.text for h in old.hits)


async def test_deleted_file_leaves_store_bm25_and_manifest(
    kbs: KnowledgeBases, tmp_path: Path
) -> None:
    files = write_corpus(tmp_path / "docs")
    kb = await kbs.open("del", create=True)
    await kb.ingest([tmp_path / "docs"])
    gone = files["html"]
    gone.unlink()
    report = await kb.ingest([tmp_path / "docs"])
    assert report.removed == [str(gone)]
    assert str(gone) not in {d.source for d in await kb.documents()}
    for fusion in ("dense", "bm25"):
        result = await kb.search_detailed("orchids watering garden", k=20, fusion=fusion)
        assert all(h.source != str(gone) for h in result.hits)


async def test_ingesting_another_folder_keeps_the_first(
    kbs: KnowledgeBases, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("apples", encoding="utf-8")
    (tmp_path / "b" / "y.txt").write_text("bananas", encoding="utf-8")
    kb = await kbs.open("two", create=True)
    await kb.ingest([tmp_path / "a"])
    report = await kb.ingest([tmp_path / "b"])
    assert report.removed == []
    assert {Path(d.source).name for d in await kb.documents()} == {"x.txt", "y.txt"}


async def test_a_file_that_fails_to_parse_is_reported_and_the_rest_go_on(
    kbs: KnowledgeBases, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (folder / "good.md").write_text("# Good\n\nFine content.", encoding="utf-8")
    kb = await kbs.open("mixed", create=True)
    report = await kb.ingest([folder])
    assert [f.path for f in report.failed] == [str(folder / "broken.pdf")]
    assert "broken.pdf" in report.failed[0].error
    assert report.added == [str(folder / "good.md")]


async def test_filters_restrict_results_to_a_folder_or_a_type(
    kbs: KnowledgeBases, tmp_path: Path
) -> None:
    for sub in ("team-a", "team-b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "policy.md").write_text(f"# Policy\n\nVacation policy {sub}.", "utf-8")
        (tmp_path / sub / "policy.txt").write_text(f"Vacation policy text {sub}.", "utf-8")
    kb = await kbs.open("filters", create=True)
    await kb.ingest([tmp_path / "team-a", tmp_path / "team-b"])
    hits = await kb.search(
        "vacation policy", k=10, filters=SearchFilters(path_prefix=str(tmp_path / "team-a"))
    )
    assert {Path(h.source).parent.name for h in hits} == {"team-a"} and len(hits) == 2
    hits = await kb.search("vacation policy", k=10, filters=SearchFilters(file_types=["txt"]))
    assert {h.file_type for h in hits} == {"txt"} and len(hits) == 2


async def test_top_k_is_exact(kbs: KnowledgeBases, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        (folder / f"note{i:02}.txt").write_text(f"Note number {i} about topic {i % 3}.", "utf-8")
    kb = await kbs.open("topk", create=True)
    await kb.ingest([folder])
    for k in (1, 3, 7, 25):
        assert len(await kb.search("note about topic", k=k)) == k
    assert len(await kb.search("note about topic", k=100)) == 30  # fewer chunks than k
    assert len(await kb.search("zzzz unrelated", k=5)) == 5  # dense still ranks everything
    default_k = len(await kb.search("note"))
    assert default_k == 5


async def test_bad_inputs_give_clear_errors(kbs: KnowledgeBases, tmp_path: Path) -> None:
    kb = await kbs.open("errors", create=True)
    with pytest.raises(NotFoundError, match=r"No such file or folder: .*nowhere"):
        await kb.ingest([tmp_path / "nowhere"])
    with pytest.raises(NotFoundError, match=r"Unknown knowledge base 'nope'\. Known: errors"):
        await kbs.open("nope")
    with pytest.raises(InvalidRequestError, match="query is empty"):
        await kb.search("   ")
    with pytest.raises(InvalidRequestError, match="k must be between"):
        await kb.search("x", k=0)
    with pytest.raises(InvalidRequestError, match="not a valid knowledge base name"):
        await kbs.create("../etc")
    with pytest.raises(InvalidRequestError, match="already exists"):
        await kbs.create("errors")
    (tmp_path / "only.xyz").write_text("?", "utf-8")
    report = await kb.ingest([tmp_path / "only.xyz"])
    assert report.skipped == [str(tmp_path / "only.xyz")] and report.added == []
    with pytest.raises(NotFoundError, match="No chunk"):
        await kb.get_chunk("missing")


async def test_get_chunk_list_and_delete(kbs: KnowledgeBases, tmp_path: Path) -> None:
    (tmp_path / "d.md").write_text("# D\n\nSome text.", "utf-8")
    kb = await kbs.open("life", create=True)
    await kb.ingest([tmp_path / "d.md"])
    hit = (await kb.search("text", k=1))[0]
    assert (await kb.get_chunk(hit.chunk_id)).text == hit.text
    assert [i.name for i in await kbs.list()] == ["life"]
    await kbs.delete("life")
    assert await kbs.list() == []
    assert not (tmp_path / "kbs" / "life").exists()


SLOW_INGEST = """
import asyncio, sys
from llmforge.core.settings import load_settings
from llmforge.kb import KnowledgeBases
from llmforge.models import embedders
from llmforge.models.fake import FakeEmbedder

class Slow(FakeEmbedder):
    async def embed(self, texts):
        await asyncio.sleep(0.15)
        return await super().embed(texts)

embedders.register("slow", lambda config: Slow(64))
settings = load_settings(None, database=sys.argv[1], kb={"path": sys.argv[2], "batch_chunks": 1},
                         embeddings=[{"name": "slow", "provider": "slow"}])

async def main():
    kbs = KnowledgeBases(settings)
    kb = await kbs.open("resume", create=True)
    report = await kb.ingest([sys.argv[3]])
    await kbs.aclose()
    print(len(report.added))

asyncio.run(main())
"""


def _done(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return int(
                conn.execute("SELECT count(*) FROM kb_files WHERE status = 'done'").fetchone()[0]
            )
    except sqlite3.Error:
        return 0


async def test_ingest_killed_midway_finishes_on_rerun_without_duplicates(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i:02}.md").write_text(
            f"# Doc {i}\n\nParagraph {i} about subject {i}.", "utf-8"
        )
    db = tmp_path / "kb-test.db"
    script = tmp_path / "slow_ingest.py"
    script.write_text(SLOW_INGEST, "utf-8")
    args = [sys.executable, str(script), f"sqlite:///{db}", str(tmp_path / "kbs"), str(folder)]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.monotonic() + 120
    while _done(db) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _done(db)
    assert 5 <= killed_at < 40, "the ingest was not interrupted midway"

    out = subprocess.run(
        args,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 40 - killed_at  # done files were not redone

    from llmforge.models import embedders
    from llmforge.models.fake import FakeEmbedder

    embedders.register("slow", lambda config: FakeEmbedder(64))
    settings = make_settings(tmp_path, embedding={"name": "slow", "provider": "slow"})
    kbs = KnowledgeBases(settings)
    try:
        kb = await kbs.open("resume")
        everything = await kb.search("doc paragraph subject", k=1000)  # k > chunks: all of them
        ids = Counter(h.chunk_id for h in everything)
        assert max(ids.values()) == 1
        per_file = Counter(h.source for h in everything)
        assert len(per_file) == 40 and set(per_file.values()) == {1}
        assert len(await kb.documents()) == 40
        hits = await kb.search("subject 17", k=1)
        assert hits[0].source.endswith("doc17.md")
        bm25 = json.loads((tmp_path / "kbs" / "resume" / "bm25" / "chunks.json").read_text())
        assert sorted(bm25["ids"]) == sorted(ids)
    finally:
        await kbs.aclose()


async def test_what_another_process_ingests_is_searched_here_at_once(tmp_path: Path) -> None:
    """Two workers of one server, or `llmforge kb ingest` next to a running server: each has its
    own handle on the same knowledge base, and a search in one finds what the other just wrote,
    by vector as well as by keyword."""
    settings = make_settings(tmp_path)
    server, cli = KnowledgeBases(settings), KnowledgeBases(settings)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pump.md").write_text("# Pump\n\nReplace the impeller seals yearly.\n", "utf-8")
    try:
        serving = await server.open("notes", create=True)
        await serving.ingest([docs])
        assert [h.source for h in await serving.search("impeller seals", k=5)]

        (docs / "orchids.md").write_text("# Orchids\n\nWater orchids once a week.\n", "utf-8")
        await (await cli.open("notes")).ingest([docs])

        orchids = str(docs / "orchids.md")
        for fusion in ("dense", "bm25"):
            found = await serving.search_detailed("water orchids once a week", k=5, fusion=fusion)
            assert orchids in [h.source for h in found.hits], fusion
    finally:
        await server.aclose()
        await cli.aclose()
