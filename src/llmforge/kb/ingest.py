"""Ingestion: files and folders -> chunks -> vectors in the store, the manifest and BM25 kept in
step.

Incremental: a file whose content hash matches its `done` manifest row is skipped; a changed file's
old chunks are replaced; files gone from an ingested folder leave the store, the manifest and BM25.
Resumable: for every batch the files are marked `pending` in the manifest before their chunks
change, the chunks are upserted under deterministic ids, and only then are the files marked
`done`. An ingest killed at any point leaves at worst some `pending` files, whose chunks the next
ingest removes before ingesting them again, so re-running finishes the job with no duplicates.
BM25 is rebuilt from the store at the end (an interrupted run's next run rebuilds it).

Files stream through in batches: a producer parses and chunks them on a worker thread while the
embedder (its own thread) embeds the previous batch, so memory holds about two batches, never the
corpus. Unsupported files are skipped and reported, files that fail to parse are reported by name,
and the rest go on. This module does not search.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmforge.core.errors import InvalidRequestError, NotFoundError
from llmforge.kb.base import VectorStore
from llmforge.kb.bm25 import Bm25Index
from llmforge.kb.chunking import TokenCounter, chunk_document
from llmforge.kb.loaders import LoadError, is_supported, load
from llmforge.kb.manifest import FileRow, Manifest, now
from llmforge.kb.types import Chunk, FileError, IngestProgress, IngestReport
from llmforge.models.base import Embedder

ProgressCallback = Callable[[IngestProgress], None]


@dataclass
class IngestTarget:
    """Everything an ingest writes to, for one knowledge base."""

    kb: str
    store: VectorStore
    embedder: Embedder
    manifest: Manifest
    counter: TokenCounter
    dimensions: int
    chunk_tokens: int
    chunk_overlap: int
    batch_chunks: int
    bm25_folder: Path


@dataclass
class _Parsed:
    path: str
    content_hash: str
    title: str
    file_type: str
    chunks: list[Chunk] = field(default_factory=list)


def walk(paths: Sequence[Path]) -> tuple[list[Path], list[str], list[Path]]:
    """(supported files, unsupported ones, roots) under `paths`; hidden entries inside folders are
    left out. Raises NotFoundError naming every path that does not exist."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise NotFoundError(
            f"No such file or folder: {', '.join(missing)}. Pass existing files or folders."
        )
    files: list[Path] = []
    skipped: list[Path] = []
    roots = [p.expanduser().resolve() for p in paths]
    for root in roots:
        candidates: Iterator[Path]
        candidates = _walk_folder(root) if root.is_dir() else iter([root])
        for file in candidates:
            if is_supported(file):
                files.append(file)
            else:
                skipped.append(file)
    files = sorted(set(files))
    return files, sorted({str(s) for s in skipped}), roots


def _walk_folder(root: Path) -> Iterator[Path]:
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(folder) / name


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _under(path: str, roots: Sequence[Path]) -> bool:
    return any(path == str(r) or path.startswith(str(r).rstrip("/") + "/") for r in roots)


async def ingest(
    target: IngestTarget, paths: Sequence[Path], progress: ProgressCallback | None = None
) -> IngestReport:
    """Bring the knowledge base in line with the files under `paths`; see the module docstring."""
    started = time.perf_counter()
    if not paths:
        raise InvalidRequestError("Nothing to ingest: pass at least one file or folder.")
    files, skipped, roots = await asyncio.to_thread(walk, paths)
    report = IngestReport(kb=target.kb, skipped=skipped)
    known = await asyncio.to_thread(target.manifest.files, target.kb)
    on_disk = {str(f) for f in files}

    # Files left pending by an interrupted run: drop their chunks; they are re-ingested below
    # (or forgotten when they are gone).
    pending = [p for p, row in known.items() if row.status == "pending"]
    gone = [p for p in known if _under(p, roots) and p not in on_disk]
    changed_store = bool(pending or gone)
    if pending or gone:
        await asyncio.to_thread(target.store.delete, sorted({*pending, *gone}))
        forget = [p for p in pending if p not in on_disk] + gone
        await asyncio.to_thread(target.manifest.forget, target.kb, sorted(set(forget)))
        report.removed = sorted(p for p in gone if known[p].status == "done")

    todo: list[tuple[Path, str]] = []
    for file, digest in await asyncio.to_thread(_hashes, files):
        if isinstance(digest, OSError):
            report.failed.append(FileError(path=str(file), error=str(digest.strerror or digest)))
            continue
        row = known.get(str(file))
        if row is not None and row.status == "done" and row.content_hash == digest:
            report.unchanged.append(str(file))
        else:
            todo.append((file, digest))
    state = IngestProgress(files_total=len(files), files_done=len(report.unchanged), chunks_done=0)
    if progress:
        progress(state)

    def stored(batch: list[_Parsed]) -> None:
        state.files_done += len(batch)
        state.chunks_done += sum(len(p.chunks) for p in batch)
        state.current = batch[-1].path
        if progress:
            progress(state)

    # Three stages overlap: files are parsed (a thread) while a batch is embedded, and a batch is
    # written to the stores (another thread) while the next one is embedded.
    queue: asyncio.Queue[_Parsed | LoadError | None] = asyncio.Queue(maxsize=64)
    producer = asyncio.create_task(_produce(target, todo, queue))
    storing: asyncio.Task[list[_Parsed]] | None = None
    try:
        batch: list[_Parsed] = []
        batch_size = 0
        while True:
            item = await queue.get()
            if isinstance(item, LoadError):
                report.failed.append(FileError(path=str(item.param), error=item.message))
                state.files_done += 1
                continue
            if item is not None:
                batch.append(item)
                batch_size += len(item.chunks)
            if batch and (item is None or batch_size >= target.batch_chunks):
                vectors = await _embed(target, batch)
                if storing is not None:
                    stored(await storing)
                storing = asyncio.create_task(_store(target, batch, vectors, known, report))
                changed_store = True
                batch, batch_size = [], 0
            if item is None:
                break
        if storing is not None:
            stored(await storing)
        await producer
    finally:
        producer.cancel()
        if storing is not None and not storing.done():
            await asyncio.wait([storing])  # a half-written batch stays `pending`: redone next run

    bm25_missing = not (target.bm25_folder / "chunks.json").is_file()
    if changed_store:
        await asyncio.to_thread(target.store.settle)
    if changed_store or bm25_missing:
        await asyncio.to_thread(rebuild_bm25, target.store, target.bm25_folder)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


async def _produce(
    target: IngestTarget,
    todo: list[tuple[Path, str]],
    queue: asyncio.Queue[_Parsed | LoadError | None],
) -> None:
    for file, digest in todo:
        try:
            parsed = await asyncio.to_thread(_parse, target, file, digest)
        except LoadError as e:
            e.param = str(file)
            await queue.put(e)
            continue
        await queue.put(parsed)
    await queue.put(None)


def _parse(target: IngestTarget, file: Path, digest: str) -> _Parsed:
    doc = load(file)
    chunks = chunk_document(
        doc, size=target.chunk_tokens, overlap=target.chunk_overlap, counter=target.counter
    )
    return _Parsed(str(file), digest, doc.title, doc.file_type, chunks)


def _hashes(files: list[Path]) -> list[tuple[Path, str | OSError]]:
    out: list[tuple[Path, str | OSError]] = []
    for file in files:
        try:
            out.append((file, file_hash(file)))
        except OSError as e:
            out.append((file, e))
    return out


async def _embed(target: IngestTarget, batch: list[_Parsed]) -> list[list[float]]:
    chunks = [c for p in batch for c in p.chunks]
    vectors: list[list[float]] = []
    for start in range(0, len(chunks), target.batch_chunks):
        part = chunks[start : start + target.batch_chunks]
        embedded = await target.embedder.embed([c.indexed_text() for c in part])
        vectors.extend(embedded.vectors)
    if vectors and len(vectors[0]) != target.dimensions:
        raise InvalidRequestError(
            f"knowledge base '{target.kb}' holds {target.dimensions}-dimensional vectors but the "
            f"embedder returned {len(vectors[0])}; ingest into a new knowledge base"
        )
    return vectors


async def _store(
    target: IngestTarget,
    batch: list[_Parsed],
    vectors: list[list[float]],
    known: dict[str, FileRow],
    report: IngestReport,
) -> list[_Parsed]:
    """Write one embedded batch: its files marked pending, their old chunks replaced, then
    marked done (a crash in between leaves them pending, to be redone)."""
    chunks = [c for p in batch for c in p.chunks]

    def rows(status: str) -> list[FileRow]:
        return [
            FileRow(
                path=p.path,
                content_hash=p.content_hash,
                status=status,  # type: ignore[arg-type]
                title=p.title,
                file_type=p.file_type,
                chunks=len(p.chunks),
                updated_at=now(),
            )
            for p in batch
        ]

    # only files the manifest knows can have chunks stored (it marks them before the store write)
    replaced = [p.path for p in batch if p.path in known]
    await asyncio.to_thread(target.manifest.mark, target.kb, rows("pending"))
    if replaced:
        await asyncio.to_thread(target.store.delete, replaced)
    await asyncio.to_thread(target.store.upsert, chunks, vectors)
    await asyncio.to_thread(target.manifest.mark, target.kb, rows("done"))
    for p in batch:
        previous = known.get(p.path)
        (report.updated if previous and previous.status == "done" else report.added).append(p.path)
    report.chunks_embedded += len(chunks)
    return batch


def rebuild_bm25(store: VectorStore, folder: Path) -> Bm25Index | None:
    """Rebuild the BM25 index of every chunk in `store` and save it in `folder`."""
    index = Bm25Index.build((c.id, c.indexed_text(), c.source, c.file_type) for c in store.scan())
    if index is None:
        Bm25Index.remove(folder)
    else:
        index.save(folder)
    return index
