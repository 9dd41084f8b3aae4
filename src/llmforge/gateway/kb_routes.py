"""The knowledge-base API: `/v1/kb/...` over the process's `KnowledgeBases`, and the MCP mount.

    GET    /v1/kb                         list knowledge bases
    POST   /v1/kb            {name}       create one (empty)
    GET    /v1/kb/{name}                  its counts, and the ingest in progress, if any
    DELETE /v1/kb/{name}                  delete it: vectors, BM25, manifest, uploaded files
    GET    /v1/kb/{name}/documents        the ingested files
    POST   /v1/kb/{name}/documents        upload files (multipart), stored in the KB's `uploads`
                                          folder and ingested; a result per file
    POST   /v1/kb/{name}/sync  {paths?}   incremental re-ingest of server paths, or of `uploads`
    POST   /v1/kb/{name}/search           {query, k, filters, detailed} -> hits (+ stages)
    GET    /v1/kb/{name}/chunks/{id}      one chunk with its metadata

Who may do what (with authentication on, i.e. a master key configured): reading (list, info,
documents, search, chunks) needs any valid key; writing (create, delete, upload, sync) needs the
master key. Syncing explicit server `paths` reads the server's disk, so it needs the master key
always: with authentication off it is refused (use `llmforge kb ingest` on the server instead).

Uploads and syncs run inside the request and answer with the finished report; while one runs,
`GET /v1/kb/{name}` shows its progress (files and chunks done). The routes only translate HTTP to
`llmforge.kb` calls; the rules (names, k, empty queries, missing paths) live there. `add_kb_routes`
also mounts the MCP server at `/mcp` (see mcp.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from llmforge.core.errors import InvalidRequestError, PermissionDeniedError
from llmforge.gateway.mcp import mount_mcp
from llmforge.gateway.responses import json_response
from llmforge.kb import (
    IngestProgress,
    IngestReport,
    KnowledgeBase,
    KnowledgeBases,
    SearchFilters,
    shared_knowledge_bases,
)

if TYPE_CHECKING:  # app.py imports this module
    from llmforge.gateway.app import AppContext

UPLOADS = "uploads"
MAX_FILES = 100  # files in one upload request
MAX_K = 1000


class KBCreate(BaseModel):
    """The body of `POST /v1/kb`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="letters, digits, '.', '_', '-'")


class SyncRequest(BaseModel):
    """The body of `POST /v1/kb/{name}/sync` (optional)."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] | None = Field(
        None, description="absolute server files or folders; none: the KB's uploads folder"
    )


class FiltersBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path_prefix: str | None = Field(None, description="only files under this server folder")
    file_types: list[str] | None = Field(None, description="only these suffixes, e.g. ['pdf']")


class SearchRequest(BaseModel):
    """The body of `POST /v1/kb/{name}/search`."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(max_length=10_000)
    k: int | None = Field(None, ge=1, le=MAX_K, description="hits (default: kb.search.k)")
    filters: FiltersBody | None = None
    fusion: Literal["zscore", "minmax", "rrf", "dense", "bm25"] | None = None
    detailed: bool = Field(False, description="add each stage's candidates and milliseconds")


FileStatus = Literal["added", "updated", "unchanged", "skipped", "failed"]
UNSUPPORTED = "unsupported file type: upload txt, md, html, pdf or docx files"


class FileResult(BaseModel):
    """What became of one uploaded file."""

    filename: str
    status: FileStatus
    source: str | None = Field(None, description="where it is stored on the server")
    error: str | None = None


class _Ingesting:
    """The ingests running or waiting on each knowledge base, for `GET /v1/kb/{name}`."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[int, tuple[float, IngestProgress | None]]] = {}
        self._next = 0

    def start(self, name: str) -> int:
        self._next += 1
        self._runs.setdefault(name, {})[self._next] = (time.time(), None)
        return self._next

    def update(self, name: str, run: int, progress: IngestProgress) -> None:
        started = self._runs[name][run][0]
        self._runs[name][run] = (started, progress.model_copy())

    def stop(self, name: str, run: int) -> None:
        runs = self._runs.get(name, {})
        runs.pop(run, None)
        if not runs:
            self._runs.pop(name, None)

    def describe(self, name: str) -> dict[str, Any] | None:
        """The oldest run (the one holding the KB's ingest lock) and how many wait behind it."""
        runs = self._runs.get(name)
        if not runs:
            return None
        started, progress = runs[min(runs)]
        body: dict[str, Any] = {
            "started_at": started,
            "seconds": round(time.time() - started, 1),
            "waiting": len(runs) - 1,
        }
        if progress is not None:
            body.update(progress.model_dump())
        return body


def add_kb_routes(app: FastAPI, ctx: AppContext) -> None:
    """The `/v1/kb` routes and the MCP server at `/mcp`."""
    ingesting = _Ingesting()

    def bases() -> KnowledgeBases:
        return shared_knowledge_bases(ctx.catalog)

    async def reader(request: Request) -> None:
        await ctx.authenticate(request)

    async def writer(request: Request) -> None:
        caller = await ctx.authenticate(request)
        if caller is not None and not caller.master:
            raise PermissionDeniedError(
                "Only the master key may create, delete, upload to or sync knowledge bases; "
                "other keys may list and search them."
            )

    read, write = [Depends(reader)], [Depends(writer)]

    async def ingest(kb: KnowledgeBase, paths: list[Path]) -> IngestReport:
        run = ingesting.start(kb.name)
        try:
            return await kb.ingest(paths, progress=lambda p: ingesting.update(kb.name, run, p))
        finally:
            ingesting.stop(kb.name, run)

    async def info_body(kb: KnowledgeBase) -> dict[str, Any]:
        info = await kb.info()
        return {
            "object": "knowledge_base",
            **info.model_dump(),
            "reranker": kb.reranker_configured,
            "ingesting": ingesting.describe(kb.name),
        }

    @app.get("/v1/kb", dependencies=read)
    async def list_kbs() -> Response:
        infos = await bases().list()
        data = [{"object": "knowledge_base", **i.model_dump()} for i in infos]
        return json_response({"object": "list", "data": data})

    @app.post("/v1/kb", dependencies=write)
    async def create_kb(body: KBCreate) -> Response:
        kb = await bases().create(body.name)
        return json_response(await info_body(kb), 201)

    @app.get("/v1/kb/{name}", dependencies=read)
    async def kb_info(name: str) -> Response:
        return json_response(await info_body(await bases().open(name)))

    @app.delete("/v1/kb/{name}", dependencies=write)
    async def delete_kb(name: str) -> Response:
        await bases().delete(name)
        return json_response({"object": "knowledge_base.deleted", "name": name, "deleted": True})

    @app.get("/v1/kb/{name}/documents", dependencies=read)
    async def list_documents(name: str) -> Response:
        documents = await (await bases().open(name)).documents()
        data = [{"object": "document", **d.model_dump()} for d in documents]
        return json_response({"object": "list", "data": data})

    @app.post("/v1/kb/{name}/documents", dependencies=write)
    async def upload(name: str, request: Request) -> Response:
        kb = await bases().open(name)  # an unknown KB is a 404 before the body is read
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise InvalidRequestError(
                "Upload files as multipart/form-data, e.g. `curl -F files=@manual.pdf ...`.",
                param="files",
            )
        folder = (bases().root / name / UPLOADS).resolve()
        async with request.form(max_files=MAX_FILES, max_fields=MAX_FILES) as form:
            uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not uploads:
                raise InvalidRequestError(
                    "No files in the upload; send them as multipart file fields named `files`.",
                    param="files",
                )
            results, stored = await _store(uploads, folder)
        report = await ingest(kb, sorted(set(stored.values()))) if stored else IngestReport(kb=name)
        results += _per_file(stored, report)
        await asyncio.to_thread(_discard_rejected, results)
        body = {
            "object": "knowledge_base.upload",
            "kb": name,
            "files": [r.model_dump() for r in results],
        }
        return json_response({**body, "report": report.model_dump()})

    @app.post("/v1/kb/{name}/sync", dependencies=write)
    async def sync(name: str, request: Request, body: SyncRequest | None = None) -> Response:
        kb = await bases().open(name)
        if body is not None and body.paths:
            caller = await ctx.authenticate(request)
            if caller is None:
                raise PermissionDeniedError(
                    "Syncing server paths reads the server's disk and needs the master key, but "
                    "authentication is off: set LLMFORGE_MASTER_KEY, or run `llmforge kb ingest "
                    "PATH --kb NAME` on the server.",
                    param="paths",
                )
            paths = [_server_path(p) for p in body.paths]
        else:
            folder = bases().root / name / UPLOADS
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            paths = [folder]
        report = await ingest(kb, paths)
        return json_response({"object": "knowledge_base.sync", **report.model_dump()})

    @app.post("/v1/kb/{name}/search", dependencies=read)
    async def search(name: str, body: SearchRequest) -> Response:
        kb = await bases().open(name)
        filters = SearchFilters(**body.filters.model_dump()) if body.filters else None
        result = await kb.search_detailed(body.query, body.k, filters, body.fusion)
        out: dict[str, Any] = {
            "object": "knowledge_base.search",
            "kb": name,
            "query": result.query,
            "k": result.k,
            "fusion": result.fusion,
            "reranked": any(s.name == "rerank" for s in result.stages),
            "data": [h.model_dump() for h in result.hits],
        }
        if body.detailed:
            out["stages"] = [s.model_dump() for s in result.stages]
        return json_response(out)

    @app.get("/v1/kb/{name}/chunks/{chunk_id}", dependencies=read)
    async def get_chunk(name: str, chunk_id: str) -> Response:
        chunk = await (await bases().open(name)).get_chunk(chunk_id)
        return json_response({"object": "chunk", "kb": name, **chunk.model_dump()})

    mount_mcp(app, ctx)


def _server_path(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise InvalidRequestError(
            f"'{raw}' is not an absolute path; sync takes absolute paths on the server.",
            param="paths",
        )
    return path


def _safe_name(filename: str | None) -> str | None:
    """The file name to store an upload under, or None when it cannot be stored."""
    name = Path((filename or "").replace("\\", "/")).name
    if not name or name.startswith(".") or "\x00" in name:
        return None
    return name


async def _store(
    uploads: list[UploadFile], folder: Path
) -> tuple[list[FileResult], dict[str, Path]]:
    """Write each upload into `folder` (atomically: a temp file, then a rename). Returns the
    results of the refused ones and {filename: stored path} of the rest."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    refused: list[FileResult] = []
    stored: dict[str, Path] = {}
    for upload in uploads:
        name = _safe_name(upload.filename)
        if name is None:
            refused.append(
                FileResult(
                    filename=upload.filename or "",
                    status="failed",
                    error="invalid file name: give each file a name not starting with '.'",
                )
            )
            continue
        target = folder / name
        await asyncio.to_thread(_write_atomically, upload, target)
        stored[name] = target
    return refused, stored


def _write_atomically(upload: UploadFile, target: Path) -> None:
    partial = target.with_name(f".{target.name}.part")  # hidden: a sync never picks it up
    upload.file.seek(0)
    with partial.open("wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)
    os.replace(partial, target)


def _per_file(stored: dict[str, Path], report: IngestReport) -> list[FileResult]:
    failed = {f.path: f.error for f in report.failed}
    outcomes: list[tuple[FileStatus, list[str]]] = [
        ("added", report.added),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
        ("skipped", report.skipped),
    ]
    status = {path: kind for kind, paths in outcomes for path in paths}
    results = []
    for name, path in stored.items():
        source = str(path)
        if source in failed:
            results.append(
                FileResult(filename=name, status="failed", source=source, error=failed[source])
            )
        elif source in status:
            kind = status[source]
            error = UNSUPPORTED if kind == "skipped" else None
            results.append(FileResult(filename=name, status=kind, source=source, error=error))
        else:
            results.append(
                FileResult(filename=name, status="failed", source=source, error="not ingested")
            )
    return results


def _discard_rejected(results: list[FileResult]) -> None:
    """Files that were not ingested (unsupported, unparseable) are not kept."""
    for result in results:
        if result.status in ("skipped", "failed") and result.source:
            Path(result.source).unlink(missing_ok=True)
            result.source = None
