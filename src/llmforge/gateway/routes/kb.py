"""The knowledge-base API: `/v1/kb/...` over the process's `KnowledgeBases`, and the MCP mount.

    GET    /v1/kb                         list knowledge bases
    POST   /v1/kb            {name}       create one (empty)
    GET    /v1/kb/{name}                  its counts, and the ingest in progress, if any
    DELETE /v1/kb/{name}                  delete it: vectors, BM25, manifest, uploaded files
    GET    /v1/kb/{name}/documents        the ingested files
    POST   /v1/kb/{name}/documents        upload files (multipart), stored in the KB's `uploads`
                                          folder and ingested; a result per file
    POST   /v1/kb/{name}/sync  {paths?}   incremental re-ingest of server paths, or of `uploads`
    POST   /v1/kb/{name}/search           {query, k, filters, detailed, expand, feedback} -> hits
    GET    /v1/kb/{name}/chunks/{id}      one chunk with its metadata
    POST   /v1/kb/{name}/tune  {options}  start tuning its retrieval (202; runs in the background)
    GET    /v1/kb/{name}/tune             the running or last tune: progress, report, error
    DELETE /v1/kb/{name}/tune             cancel the running tune (the serving index is kept)
    GET    /v1/kb/{name}/versions         its index versions with lineage and gate figures
    POST   /v1/kb/{name}/rollback {version?}  serve another kept version (default: the parent)

Who may do what (with authentication on, i.e. a master key configured): reading (list, info,
documents, search, chunks, versions, a tune's status) needs any valid key; writing (create,
delete, upload, sync, tune, cancelling a tune, rollback) needs the master key. Syncing explicit
server `paths` reads the server's disk, so it needs the master key always: with authentication
off it is refused (use `llmforge kb ingest` on the server instead).

A tune runs as a task of the app (minutes of CPU); `GET .../tune` shows its stage and, once done,
its report (accepted or refused, with the gate's figures). Only the latest tune of each knowledge
base is remembered, in this process; the versions it made are in `GET .../versions` for good.

Uploads and syncs run inside the request and answer with the finished report; while one runs,
`GET /v1/kb/{name}` shows its progress (files and chunks done). The routes only translate HTTP to
`llmforge.kb` calls; the rules (names, k, empty queries, missing paths) live there. `mount_mcp`
serves the knowledge bases' MCP server (kb/mcp.py) at `/mcp`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llmforge.core.errors import (
    InvalidRequestError,
    LLMForgeError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
)
from llmforge.gateway.context import AppContext, Authenticated, Ctx, api_router, authenticate
from llmforge.gateway.replies import forge_error_response, json_response
from llmforge.kb import (
    IngestProgress,
    IngestReport,
    KnowledgeBase,
    KnowledgeBases,
    SearchFilters,
    shared_knowledge_bases,
)
from llmforge.kb.expansion import expander_for
from llmforge.kb.mcp import MCP_PATH, build_server
from llmforge.kb.queries import QueryGenerator, generator_for
from llmforge.kb.search import MAX_FEEDBACK
from llmforge.kb.tune import TuneOptions, TuneProgress, TuneReport

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

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
    expand: Literal["hyde", "multi-query"] | None = Field(
        None, description="also search what `expand_model` writes for the query (one model call)"
    )
    expand_model: str | None = Field(None, description="the chat model writing the expansion")
    feedback: int | None = Field(
        None,
        ge=0,
        le=MAX_FEEDBACK,
        description="pseudo-relevance feedback: the query moves towards its top N results before "
        "the dense search runs again; 0 = off (default: kb.search.feedback)",
    )


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


def _ingesting(ctx: AppContext) -> _Ingesting:
    return ctx.shared("kb.ingesting", _Ingesting)


def _bases(ctx: AppContext) -> KnowledgeBases:
    return shared_knowledge_bases(ctx.catalog)


async def _writer(caller: Authenticated) -> None:
    """Writes need the master key when keys are on (anyone may write when they are off)."""
    if caller is not None and not caller.master:
        raise PermissionDeniedError(
            "Only the master key may create, delete, upload to or sync knowledge bases; "
            "other keys may list and search them."
        )


router = api_router(tags=["knowledge bases"], dependencies=[Depends(authenticate)])
WRITE = [Depends(_writer)]


async def _ingest(ctx: AppContext, kb: KnowledgeBase, paths: list[Path]) -> IngestReport:
    ingesting = _ingesting(ctx)
    run = ingesting.start(kb.name)
    try:
        return await kb.ingest(paths, progress=lambda p: ingesting.update(kb.name, run, p))
    finally:
        ingesting.stop(kb.name, run)


async def _info_body(ctx: AppContext, kb: KnowledgeBase) -> dict[str, Any]:
    info = await kb.info()
    return {
        "object": "knowledge_base",
        **info.model_dump(),
        "reranker": kb.reranker_configured,
        "ingesting": _ingesting(ctx).describe(kb.name),
        "version": (await kb.active_version()).version,
    }


@router.get("/v1/kb")
async def list_kbs(ctx: Ctx) -> Response:
    infos = await _bases(ctx).list()
    data = [{"object": "knowledge_base", **i.model_dump()} for i in infos]
    return json_response({"object": "list", "data": data})


@router.post("/v1/kb", dependencies=WRITE, status_code=201)
async def create_kb(ctx: Ctx, body: KBCreate) -> Response:
    kb = await _bases(ctx).create(body.name)
    return json_response(await _info_body(ctx, kb), 201)


@router.get("/v1/kb/{name}")
async def kb_info(ctx: Ctx, name: str) -> Response:
    return json_response(await _info_body(ctx, await _bases(ctx).open(name)))


@router.delete("/v1/kb/{name}", dependencies=WRITE)
async def delete_kb(ctx: Ctx, name: str) -> Response:
    await _bases(ctx).delete(name)
    return json_response({"object": "knowledge_base.deleted", "name": name, "deleted": True})


@router.get("/v1/kb/{name}/documents")
async def list_documents(ctx: Ctx, name: str) -> Response:
    documents = await (await _bases(ctx).open(name)).documents()
    data = [{"object": "document", **d.model_dump()} for d in documents]
    return json_response({"object": "list", "data": data})


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["files"],
                }
            }
        },
    }
}


@router.post("/v1/kb/{name}/documents", dependencies=WRITE, openapi_extra=UPLOAD_BODY)
async def upload(ctx: Ctx, name: str, request: Request) -> Response:
    """Upload files (multipart field `files`); each is stored and ingested."""
    kb = await _bases(ctx).open(name)  # an unknown KB is a 404 before the body is read
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise InvalidRequestError(
            "Upload files as multipart/form-data, e.g. `curl -F files=@manual.pdf ...`.",
            param="files",
        )
    folder = (_bases(ctx).root / name / UPLOADS).resolve()
    async with request.form(max_files=MAX_FILES, max_fields=MAX_FILES) as form:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise InvalidRequestError(
                "No files in the upload; send them as multipart file fields named `files`.",
                param="files",
            )
        results, stored = await _store(uploads, folder)
    report = await _ingest(ctx, kb, sorted(set(stored.values()))) if stored else None
    report = report or IngestReport(kb=name)
    results += _per_file(stored, report)
    await asyncio.to_thread(_discard_rejected, results)
    body = {
        "object": "knowledge_base.upload",
        "kb": name,
        "files": [r.model_dump() for r in results],
    }
    return json_response({**body, "report": report.model_dump()})


@router.post("/v1/kb/{name}/sync", dependencies=WRITE)
async def sync(
    ctx: Ctx, name: str, caller: Authenticated, body: SyncRequest | None = None
) -> Response:
    kb = await _bases(ctx).open(name)
    if body is not None and body.paths:
        if caller is None:
            raise PermissionDeniedError(
                "Syncing server paths reads the server's disk and needs the master key, but "
                "authentication is off: set LLMFORGE_MASTER_KEY, or run `llmforge kb ingest "
                "PATH --kb NAME` on the server.",
                param="paths",
            )
        paths = [_server_path(p) for p in body.paths]
    else:
        folder = _bases(ctx).root / name / UPLOADS
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        paths = [folder]
    report = await _ingest(ctx, kb, paths)
    return json_response({"object": "knowledge_base.sync", **report.model_dump()})


@router.post("/v1/kb/{name}/search")
async def search(ctx: Ctx, name: str, body: SearchRequest) -> Response:
    kb = await _bases(ctx).open(name)
    filters = SearchFilters(**body.filters.model_dump()) if body.filters else None
    expander = None
    if body.expand is not None:
        if body.expand_model is None:
            raise InvalidRequestError(
                f"expand={body.expand} needs `expand_model`: the chat model that writes it.",
                param="expand_model",
            )
        expander = expander_for(body.expand, ctx.catalog.chat(body.expand_model))
    result = await kb.search_detailed(
        body.query, body.k, filters, body.fusion, expander, body.feedback
    )
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


@router.get("/v1/kb/{name}/chunks/{chunk_id}")
async def get_chunk(ctx: Ctx, name: str, chunk_id: str) -> Response:
    chunk = await (await _bases(ctx).open(name)).get_chunk(chunk_id)
    return json_response({"object": "chunk", "kb": name, **chunk.model_dump()})


# -- tuning and index versions ------------------------------------------------------------------


class RollbackRequest(BaseModel):
    """The body of `POST /v1/kb/{name}/rollback` (optional)."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=0, description="default: the serving version's parent")


class _TuneRun:
    """One tune started over the API, running as a task of the app."""

    def __init__(self, name: str, options: TuneOptions) -> None:
        self.name = name
        self.options = options
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.stop = threading.Event()
        self.progress: TuneProgress | None = None
        self.report: TuneReport | None = None
        self.error: LLMForgeError | None = None
        self.status = "running"
        self.task: asyncio.Task[None] | None = None

    def body(self) -> dict[str, Any]:
        return {
            "object": "knowledge_base.tune",
            "kb": self.name,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "options": self.options.model_dump(exclude={"labelled"}),
            "progress": self.progress.model_dump() if self.progress else None,
            "report": self.report.model_dump() if self.report else None,
            "error": (
                {"message": self.error.message, "type": type(self.error).__name__}
                if self.error
                else None
            ),
        }


class _Tunes:
    """The latest tune of each knowledge base (running or finished) in this process."""

    def __init__(self) -> None:
        self.runs: dict[str, _TuneRun] = {}

    async def aclose(self) -> None:
        for run in self.runs.values():
            if run.task is not None and not run.task.done():
                run.stop.set()
                run.task.cancel()
                await asyncio.gather(run.task, return_exceptions=True)


def _tunes(ctx: AppContext) -> _Tunes:
    return ctx.shared("kb.tunes", _Tunes)


async def _run_tune(run: _TuneRun, kb: KnowledgeBase, generator: QueryGenerator) -> None:
    def progress(p: TuneProgress) -> None:
        run.progress = p

    try:
        run.report = await kb.tune(run.options, generator, progress=progress, stop=run.stop)
        run.status = "accepted" if run.report.accepted else "refused"
    except asyncio.CancelledError:
        run.status = "cancelled"
    except LLMForgeError as e:
        run.status, run.error = "failed", e
    except Exception as e:  # a bug or a library failure: reported on the run, not lost
        run.status, run.error = "failed", LLMForgeError(f"{type(e).__name__}: {e}")
    finally:
        run.finished_at = time.time()


@router.post("/v1/kb/{name}/tune", dependencies=WRITE, status_code=202)
async def start_tune(ctx: Ctx, name: str, body: TuneOptions | None = None) -> Response:
    """Start tuning a knowledge base's retrieval; poll `GET /v1/kb/{name}/tune` for the result."""
    options = body or TuneOptions()
    kb = await _bases(ctx).open(name)
    tunes = _tunes(ctx)
    running = tunes.runs.get(name)
    if running is not None and running.status == "running":
        raise InvalidRequestError(
            f"A tune of '{name}' is already running (since {running.started_at:.0f}); poll "
            f"GET /v1/kb/{name}/tune or cancel it with DELETE /v1/kb/{name}/tune."
        )
    chat = ctx.catalog.chat(options.model) if options.queries == "model" and options.model else None
    generator = generator_for(options.queries, chat, options.model)
    run = _TuneRun(name, options)
    tunes.runs[name] = run
    run.task = asyncio.create_task(_run_tune(run, kb, generator))
    return json_response(run.body(), 202)


@router.get("/v1/kb/{name}/tune")
async def tune_status(ctx: Ctx, name: str) -> Response:
    await _bases(ctx).open(name)
    run = _tunes(ctx).runs.get(name)
    if run is None:
        raise NotFoundError(
            f"No tune of '{name}' has run since the server started; start one with "
            f"POST /v1/kb/{name}/tune (past results: GET /v1/kb/{name}/versions)."
        )
    return json_response(run.body())


@router.delete("/v1/kb/{name}/tune", dependencies=WRITE)
async def cancel_tune(ctx: Ctx, name: str) -> Response:
    """Stop a running tune; the serving index stays as it is."""
    run = _tunes(ctx).runs.get(name)
    if run is None or run.task is None or run.status != "running":
        raise NotFoundError(f"No tune of '{name}' is running.")
    run.stop.set()
    run.task.cancel()
    await asyncio.gather(run.task, return_exceptions=True)
    return json_response(run.body())


@router.get("/v1/kb/{name}/versions")
async def list_versions(ctx: Ctx, name: str) -> Response:
    found = await (await _bases(ctx).open(name)).versions()
    data = [{"object": "knowledge_base.version", **v.model_dump()} for v in found]
    return json_response({"object": "list", "data": data})


@router.post("/v1/kb/{name}/rollback", dependencies=WRITE)
async def rollback(ctx: Ctx, name: str, body: RollbackRequest | None = None) -> Response:
    """Serve an earlier (or any kept) index version: by default the serving one's parent."""
    kb = await _bases(ctx).open(name)
    version = await kb.rollback(body.version if body else None)
    return json_response({"object": "knowledge_base.version", **version.model_dump()})


# -- the MCP server at /mcp ---------------------------------------------------------------------


class _McpEndpoint:
    """The ASGI app behind `/mcp`: checks the API key, then hands the request to the session
    manager of the running app (made anew by every lifespan: a manager runs only once)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.manager: StreamableHTTPSessionManager | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.ctx.authenticate(Request(scope))
        except LLMForgeError as e:
            await forge_error_response(MCP_PATH, e)(scope, receive, send)
            return
        if self.manager is None:
            error = OverloadedError("The MCP server is not running.")
            await forge_error_response(MCP_PATH, error)(scope, receive, send)
            return
        await self.manager.handle_request(scope, receive, send)


def mount_mcp(app: FastAPI, ctx: AppContext) -> None:
    """Serve the knowledge bases' MCP server (kb/mcp.py) at `/mcp` (streamable HTTP, stateless,
    the same API keys as the rest of the API) and run its session manager in the app's
    lifespan."""
    endpoint = _McpEndpoint(ctx)
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint, include_in_schema=False))
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            server = build_server(lambda: shared_knowledge_bases(ctx.catalog))
            server.streamable_http_app(
                streamable_http_path=MCP_PATH, stateless_http=True, host=ctx.settings.server.host
            )
            manager = server.session_manager
            async with manager.run():
                endpoint.manager = manager
                try:
                    yield state
                finally:
                    endpoint.manager = None

    app.router.lifespan_context = lifespan


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
