"""`llmforge kb ...`: ingest folders into a knowledge base, search it, list and delete them; tune
its retrieval, list its index versions and roll back.

Command bodies only parse options, call `KnowledgeBases` and print; errors propagate as
`LLMForgeError`s, which `llmforge.cli.main` prints on one line.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from llmforge.core.cli import (
    ConfigOption,
    JsonOption,
    console,
    print_rows,
    progress_bar,
    run,
    settings_for,
)
from llmforge.core.errors import InvalidRequestError
from llmforge.core.settings import Settings
from llmforge.kb.knowledge_base import KnowledgeBases
from llmforge.kb.queries import generator_for
from llmforge.kb.search import MAX_FEEDBACK
from llmforge.kb.tune import LabelledQuery, TuneOptions, TuneProgress, TuneReport
from llmforge.kb.types import IngestProgress, IngestReport, KBInfo, SearchFilters, SearchResult
from llmforge.kb.versions import IndexVersion, describe
from llmforge.models.catalog import ModelCatalog

app = typer.Typer(
    help="Knowledge bases: ingest, search, list, delete, tune, roll back, serve over MCP.",
    no_args_is_help=True,
)

KBOption = Annotated[str, typer.Option("--kb", help="Knowledge base name.")]


@app.command("ingest")
def ingest_command(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    kb: KBOption,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add or update files in a knowledge base (created if new); only changed files are
    re-embedded, and files deleted from an ingested folder leave it."""
    settings = settings_for(ctx, config)
    report = run(_ingest(settings, kb, paths, show_progress=not as_json and sys.stderr.isatty()))
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return
    _print_report(report)


async def _ingest(
    settings: Settings, name: str, paths: list[Path], *, show_progress: bool
) -> IngestReport:
    kbs = KnowledgeBases(settings)
    try:
        kb = await kbs.open(name, create=True)
        if not show_progress:
            return await kb.ingest(paths)
        with progress_bar() as bar:
            files = bar.add_task("files", total=None, extra="")
            chunks = bar.add_task("chunks", total=None, extra="")

            def update(p: IngestProgress) -> None:
                bar.update(
                    files,
                    total=p.files_total,
                    completed=p.files_done,
                    extra=Path(p.current).name if p.current else "",
                )
                bar.update(chunks, completed=p.chunks_done, extra="embedded")

            return await kb.ingest(paths, progress=update)
    finally:
        await kbs.aclose()


def _print_report(report: IngestReport) -> None:
    console.print(
        f"[bold]{report.kb}[/]: {len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed, "
        f"{report.chunks_embedded} chunks embedded in {report.seconds:.1f}s"
    )
    for path in report.skipped:
        console.print(f"  skipped (unsupported type): {path}", style="yellow", markup=False)
    for failure in report.failed:
        console.print(f"  failed: {failure.error}", style="red", markup=False)


@app.command("search")
def search_command(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    kb: KBOption,
    k: Annotated[int | None, typer.Option("--k", "-k", min=1, help="How many results.")] = None,
    path: Annotated[
        str | None, typer.Option("--path", help="Only files under this folder.")
    ] = None,
    file_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only this file type (repeatable).")
    ] = None,
    fusion: Annotated[
        str | None,
        typer.Option(
            help="corroborated, zscore, minmax, rrf, dense or bm25 (default: kb.search.fusion)"
        ),
    ] = None,
    feedback: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=MAX_FEEDBACK,
            help="Pseudo-relevance feedback: move the query towards its top N results and search "
            "again; 0 turns it off (default: kb.search.feedback).",
        ),
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show each stage and every hit's stage scores.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search a knowledge base (hybrid dense + BM25, reranked when a reranker is configured)."""
    settings = settings_for(ctx, config)
    filters = SearchFilters(
        path_prefix=str(Path(path).expanduser().resolve()) if path else None,
        file_types=file_type or None,
    )
    result = run(_search(settings, kb, query, k, filters, fusion, feedback))
    if as_json:
        payload = result.model_dump() if explain else [h.model_dump() for h in result.hits]
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
        return
    if explain:
        for stage in result.stages:
            console.print(
                f"stage {stage.name}: {stage.candidates} candidates, {stage.ms:.1f} ms "
                f"({stage.detail})",
                markup=False,
            )
    for rank, hit in enumerate(result.hits, start=1):
        where = " > ".join([hit.title, *hit.heading_path])
        page = f" p.{hit.page}" if hit.page else ""
        console.print(f"[bold]{rank}. {hit.score:.3f}[/] {hit.source}{page}", highlight=False)
        console.print(f"   {where}", style="dim", markup=False)
        if explain:
            console.print(
                f"   dense={_fmt(hit.dense_score)} bm25={_fmt(hit.bm25_score)} "
                f"fused={_fmt(hit.fused_score)} rerank={_fmt(hit.rerank_score)}",
                markup=False,
            )
        console.print("   " + hit.text[:300].replace("\n", " "), markup=False)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


async def _search(
    settings: Settings,
    name: str,
    query: str,
    k: int | None,
    filters: SearchFilters,
    fusion: str | None,
    feedback: int | None,
) -> SearchResult:
    kbs = KnowledgeBases(settings)
    try:
        kb = await kbs.open(name)
        return await kb.search_detailed(query, k, filters, fusion, feedback=feedback)
    finally:
        await kbs.aclose()


@app.command("list")
def list_command(
    ctx: typer.Context, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """List knowledge bases."""
    infos = run(_list(settings_for(ctx, config)))
    rows = [i.model_dump() for i in infos]
    if not as_json:
        for row in rows:
            row["created_at"] = dt.datetime.fromtimestamp(row["created_at"]).strftime(
                "%Y-%m-%d %H:%M"
            )
    print_rows(
        rows,
        ["name", "documents", "chunks", "embedding", "store", "created_at"],
        as_json,
        title="Knowledge bases",
    )


async def _list(settings: Settings) -> list[KBInfo]:
    kbs = KnowledgeBases(settings)
    try:
        return await kbs.list()
    finally:
        await kbs.aclose()


@app.command("delete")
def delete_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Knowledge base to delete.")],
    config: ConfigOption = None,
) -> None:
    """Delete a knowledge base: its vectors, BM25 index and manifest (not the source files)."""
    run(_delete(settings_for(ctx, config), name))
    console.print(f"deleted knowledge base {name}", markup=False)


async def _delete(settings: Settings, name: str) -> None:
    kbs = KnowledgeBases(settings)
    try:
        await kbs.delete(name)
    finally:
        await kbs.aclose()


@app.command("tune")
def tune_command(
    ctx: typer.Context,
    kb: KBOption,
    method: Annotated[
        str,
        typer.Option(help="fusion (default), adapter, finetune, or auto (all three compete)"),
    ] = "fusion",
    queries: Annotated[
        str, typer.Option(help="pseudo (title and sentence queries, no model) or model")
    ] = "pseudo",
    model: Annotated[
        str | None,
        typer.Option(help="queries=model: the chat model (under `models:`) writing them"),
    ] = None,
    sample: Annotated[int, typer.Option(min=8, help="chunks to write queries for")] = 400,
    steps: Annotated[int, typer.Option(min=1, help="finetune: training steps")] = 120,
    min_gain: Annotated[
        float, typer.Option(help="nDCG@10 the candidate must gain on held-out queries")
    ] = 0.01,
    labelled: Annotated[
        Path | None,
        typer.Option(
            help='JSONL of judged queries: {"query": ..., "relevant": {"chunk id or file": 1}}'
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="sampling and training seed")] = 0,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Adapt a knowledge base's retrieval to its own documents (no labels needed); the result
    serves only if it beats the current retriever on held-out queries."""
    settings = settings_for(ctx, config)
    options = TuneOptions.model_validate(
        {
            "method": method,
            "queries": queries,
            "model": model,
            "sample": sample,
            "steps": steps,
            "min_gain": min_gain,
            "seed": seed,
            "labelled": read_labelled(labelled) if labelled else None,
        }
    )
    show = not as_json and sys.stderr.isatty()
    report = run(_tune(settings, kb, options, show_progress=show))
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return
    for c in report.candidates:
        weight = f" {c.dense_weight}" if c.dense_weight is not None else ""
        console.print(
            f"  candidate {c.name}: {c.fusion}{weight}, dev nDCG@10 {c.dev:.3f} "
            f"(serving {report.current_dev:.3f}), {c.cpu_seconds:.0f} CPU s",
            markup=False,
        )
    style = "green" if report.accepted else "yellow"
    console.print(f"{report.kb}: {report.message}", style=style, markup=False)


def read_labelled(path: Path) -> list[LabelledQuery]:
    """Judged queries from a JSONL file (InvalidRequestError naming the bad line)."""
    out = []
    try:
        lines = path.expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InvalidRequestError(f"Cannot read the labelled set '{path}': {e.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                out.append(LabelledQuery.model_validate_json(line))
            except ValidationError as e:
                raise InvalidRequestError(
                    f"{path}:{number}: not a judged query ({e.errors()[0]['msg']}); write "
                    '{"query": "...", "relevant": {"CHUNK_ID or /path/of/file": 1}} per line.'
                ) from None
    return out


async def _tune(
    settings: Settings, name: str, options: TuneOptions, *, show_progress: bool
) -> TuneReport:
    kbs = KnowledgeBases(settings)
    catalog = ModelCatalog.from_settings(settings) if options.queries == "model" else None
    try:
        kb = await kbs.open(name)
        chat = catalog.chat(options.model) if catalog is not None and options.model else None
        generator = generator_for(options.queries, chat, options.model)
        if not show_progress:
            return await kb.tune(options, generator)
        with progress_bar() as bar:
            task = bar.add_task("tune", total=None, extra="")

            def update(p: TuneProgress) -> None:
                bar.update(
                    task,
                    description=p.stage,
                    total=p.total or None,
                    completed=p.done,
                    extra=p.detail,
                )

            return await kb.tune(options, generator, progress=update)
    finally:
        await kbs.aclose()
        if catalog is not None:
            await catalog.aclose()


@app.command("versions")
def versions_command(
    ctx: typer.Context, kb: KBOption, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """A knowledge base's index versions: which serves, where each came from, its gate figures."""
    found = run(_versions(settings_for(ctx, config), kb))
    if as_json:
        sys.stdout.write(json.dumps([v.model_dump() for v in found], indent=2) + "\n")
        return
    rows = describe(found)
    for row in rows:
        row["created_at"] = dt.datetime.fromtimestamp(float(str(row["created_at"]))).strftime(
            "%Y-%m-%d %H:%M"
        )
    print_rows(
        rows,
        ["version", "status", "parent", "method", "fusion", "gate", "created_at"],
        False,
        title=f"Index versions of {kb}",
    )


async def _versions(settings: Settings, name: str) -> list[IndexVersion]:
    kbs = KnowledgeBases(settings)
    try:
        return await (await kbs.open(name)).versions()
    finally:
        await kbs.aclose()


@app.command("rollback")
def rollback_command(
    ctx: typer.Context,
    kb: KBOption,
    to: Annotated[
        int | None, typer.Option("--to", help="version to serve (default: the current's parent)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve an earlier (or any kept) index version again."""
    version = run(_rollback(settings_for(ctx, config), kb, to))
    console.print(f"{kb}: now serving index version {version.version}", markup=False)


async def _rollback(settings: Settings, name: str, to: int | None) -> IndexVersion:
    kbs = KnowledgeBases(settings)
    try:
        return await (await kbs.open(name)).rollback(to)
    finally:
        await kbs.aclose()


@app.command("mcp")
def mcp_command(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Serve the knowledge bases to an MCP client over stdio (search, fetch, list)."""
    from llmforge.kb.mcp import serve_stdio  # the MCP SDK only for this command

    run(serve_stdio(settings_for(ctx, config)))
