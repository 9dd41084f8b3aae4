"""Index versions of a knowledge base: which embedder, vectors and fusion serve its searches, where
each came from, and the cross-process lock that keeps writes and version changes apart.

A knowledge base starts at version 0: the configured embedding model, the vectors in the KB's own
folder, the configured fusion. `llmforge kb tune` may add versions (`tune.py`): each names the
embedder weights it embeds with (a fine-tuned copy under `versions/vN/model`, or none), an optional
query adapter, the folder of its vectors (its own, or shared with its parent when only the search
side changed), its fusion, its lineage (parent, method, training data, steps, seed, the corpus it
saw) and the figures its gate measured. `versions.json` in the KB's folder is the registry; it is
replaced atomically, so a reader never sees half of it, and a process serving the KB notices a
change by the file's modification time. Exactly one version is `active`; the others are `retired`
(kept for rollback) or `discarded` (refused by the gate: their figures stay, their files do not).

`catch_up` makes a version's vectors hold exactly the chunks of another store (re-embedding, with
the version's embedder, the sources whose chunks differ): versions other than the active one stop
receiving ingests, so activating one (after a tune, or a rollback) first brings it up to date.
`write_lock` is held by every ingest and every activation, across processes (a tune in the CLI
while the gateway ingests), so no ingest lands in a store that is being replaced.

This module does no training and no searching.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from llmforge.core.errors import InvalidRequestError, NotFoundError
from llmforge.kb.base import VectorStore
from llmforge.kb.types import Chunk
from llmforge.models.base import Embedder

REGISTRY = "versions.json"
VERSIONS = "versions"
LOCK = ".write.lock"

Status = Literal["active", "retired", "discarded"]


class GateFigures(BaseModel):
    """nDCG@10 of the serving retriever and of the candidate on queries the tuning never trained
    on, and how many queries that was."""

    current: float
    candidate: float
    queries: int

    @property
    def gain(self) -> float:
        return self.candidate - self.current


class Lineage(BaseModel):
    """How a version was made: enough to tell what it learned from and to make it again."""

    method: str = Field(description="what was tuned: fusion, adapter, finetune (+ fusion)")
    generator: str = Field(description="where the training queries came from")
    base_model: str = Field(description="the weights the embedder started from")
    sampled_chunks: int = 0
    train_queries: int = 0
    dev_queries: int = 0
    test_queries: int = 0
    steps: int = 0
    seed: int = 0
    corpus_chunks: int = 0
    corpus_fingerprint: str = Field("", description="hash of the chunk ids it was tuned on")
    cpu_seconds: float = 0.0
    seconds: float = 0.0


class IndexVersion(BaseModel):
    """One way of searching a knowledge base."""

    version: int
    status: Status
    parent: int | None = None
    created_at: float = Field(default_factory=time.time)
    activated_at: float | None = None
    model: str | None = Field(
        None, description="embedder weights (folder relative to the KB's); None: the KB's model"
    )
    adapter: str | None = Field(
        None, description="query adapter matrix (.npy relative to the KB's folder), if any"
    )
    store: str = Field("", description="folder of the vectors relative to the KB's; '' = its own")
    fusion: str | None = Field(None, description="None: kb.search.fusion")
    dense_weight: float | None = Field(None, description="None: kb.search.dense_weight")
    lineage: Lineage | None = None
    gate: GateFigures | None = None
    labelled: GateFigures | None = Field(None, description="the user's labelled set, if given")
    note: str = ""


class Registry(BaseModel):
    versions: list[IndexVersion]

    @property
    def active(self) -> IndexVersion:
        return next(v for v in self.versions if v.status == "active")

    def get(self, version: int) -> IndexVersion:
        for v in self.versions:
            if v.version == version:
                return v
        known = ", ".join(str(v.version) for v in self.versions if v.status != "discarded")
        raise NotFoundError(f"No index version {version}. Versions you can use: {known}.")

    def next_number(self) -> int:
        return max(v.version for v in self.versions) + 1


def load(folder: Path) -> Registry:
    """The registry of the KB in `folder` (version 0 alone when it was never tuned)."""
    path = folder / REGISTRY
    try:
        return Registry.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return Registry(versions=[IndexVersion(version=0, status="active", note="as ingested")])


def stamp(folder: Path) -> int | None:
    """Changes whenever the registry is rewritten (None while there is none)."""
    try:
        return (folder / REGISTRY).stat().st_mtime_ns
    except OSError:
        return None


def save(folder: Path, registry: Registry) -> None:
    """Replace the registry atomically (a temporary file, then a rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{REGISTRY}.tmp"
    tmp.write_text(registry.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, folder / REGISTRY)


def version_folder(folder: Path, version: int) -> Path:
    return folder / VERSIONS / f"v{version}"


def activate(folder: Path, registry: Registry, version: int) -> Registry:
    """The registry with `version` active and the previous active one retired (not saved)."""
    target = registry.get(version)
    if target.status == "discarded":
        raise InvalidRequestError(
            f"Index version {version} was refused by its gate and its files are gone; pick "
            "another version (`llmforge kb versions`)."
        )
    updated = []
    for v in registry.versions:
        if v.version == version:
            v = v.model_copy(update={"status": "active", "activated_at": time.time()})
        elif v.status == "active":
            v = v.model_copy(update={"status": "retired"})
        updated.append(v)
    return Registry(versions=updated)


def remove_orphans(folder: Path, registry: Registry) -> list[str]:
    """Delete version folders no registered, kept version owns (a tune cut short leaves one)."""
    root = folder / VERSIONS
    if not root.is_dir():
        return []
    kept = {f"v{v.version}" for v in registry.versions if v.status != "discarded"}
    removed = []
    for child in sorted(root.iterdir()):
        if child.name not in kept:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child.name)
    return removed


@contextlib.asynccontextmanager
async def write_lock(folder: Path) -> AsyncIterator[None]:
    """Held by every write to a KB's stores and every version change, across processes."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = await asyncio.to_thread((folder / LOCK).open, "a+b")
    try:
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def exclusive(path: Path, busy: str) -> Iterator[None]:
    """A non-blocking cross-process lock on `path`; InvalidRequestError(`busy`) when taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+b")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidRequestError(busy) from None
        yield
    finally:
        handle.close()


async def catch_up(
    source: VectorStore,
    target: VectorStore,
    embedder: Embedder,
    batch: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Make `target` hold exactly `source`'s chunks: sources whose chunk ids differ are deleted
    from `target` and their chunks re-embedded with `embedder`. Returns the chunks embedded."""
    have = await asyncio.to_thread(_ids_by_source, target)
    want = await asyncio.to_thread(_ids_by_source, source)
    stale = sorted(s for s in have if want.get(s) != have[s])
    missing = sorted(s for s in want if have.get(s) != want[s])
    if stale:
        await asyncio.to_thread(target.delete, stale)
    ids = [i for s in missing for i in sorted(want[s])]
    done = 0
    for start in range(0, len(ids), batch):
        chunks = await asyncio.to_thread(_scan, source, ids[start : start + batch])
        await embed_into(target, embedder, chunks)
        done += len(chunks)
        if progress:
            progress(done)
    if done:
        await asyncio.to_thread(target.settle)
    return done


async def embed_into(target: VectorStore, embedder: Embedder, chunks: list[Chunk]) -> None:
    if chunks:
        vectors = (await embedder.embed([c.indexed_text() for c in chunks])).vectors
        await asyncio.to_thread(target.upsert, chunks, vectors)


def _scan(store: VectorStore, ids: list[str]) -> list[Chunk]:
    return list(store.scan(ids))


def _ids_by_source(store: VectorStore) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for chunk in store.scan():
        found.setdefault(chunk.source, set()).add(chunk.id)
    return {s: frozenset(ids) for s, ids in found.items()}


def describe(found: list[IndexVersion]) -> list[dict[str, object]]:
    """One plain row per version, newest first, for `llmforge kb versions`."""
    rows: list[dict[str, object]] = []
    for v in sorted(found, key=lambda v: -v.version):
        rows.append(
            {
                "version": v.version,
                "status": v.status,
                "parent": v.parent,
                "method": v.lineage.method if v.lineage else "ingest",
                "fusion": v.fusion or "(config)",
                "gate": (
                    f"{v.gate.current:.3f} -> {v.gate.candidate:.3f} ({v.gate.queries} q)"
                    if v.gate
                    else ""
                ),
                "created_at": v.created_at,
            }
        )
    return rows
