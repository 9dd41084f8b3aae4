"""`llmforge models ...`: what models are configured, and adding local GGUF files as models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from llmforge.core.cli import ConfigOption, JsonOption, console, print_rows, settings_for
from llmforge.core.errors import ConfigError
from llmforge.models import local_files

app = typer.Typer(help="Configured chat and embedding models.", no_args_is_help=True)


@app.command("list")
def list_models(
    ctx: typer.Context, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """List the models clients can name."""
    s = settings_for(ctx, config)
    rows = [
        {"name": m.name, "kind": "chat", "provider": m.provider, "source": m.path or m.base_url}
        for m in s.models
    ] + [
        {
            "name": e.name,
            "kind": "embedding",
            "provider": e.provider,
            "source": e.path or e.base_url,
        }
        for e in s.embeddings
    ]
    print_rows(rows, ["name", "kind", "provider", "source"], as_json, title="Models")


@app.command("add")
def add_model(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="a .gguf file, or a folder of them")],
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="what clients send as `model` (one file only)"),
    ] = None,
    context_length: Annotated[
        int | None,
        typer.Option(
            help=f"tokens per request (default: the file's, at most {local_files.MAX_CONTEXT})"
        ),
    ] = None,
    parallel: Annotated[
        int | None, typer.Option(help="requests decoded at once (default: from the machine)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: all cores, at run time)")
    ] = None,
    chat_template: Annotated[
        Path | None,
        typer.Option(help="a Jinja chat template file, for a GGUF without a usable one"),
    ] = None,
    replace: Annotated[bool, typer.Option(help="replace a model of the same name")] = False,
    config: ConfigOption = None,
) -> None:
    """Add local GGUF model(s) to the config file (--config, $LLMFORGE_CONFIG, ./llmforge.yaml).

    The chat template and context length come from the file, threads and parallel requests from
    the machine the server runs on."""
    files = local_files.gguf_files(path)
    if name is not None and len(files) > 1:
        raise ConfigError(f"--name names one model, and '{path}' holds {len(files)} GGUF files")
    template = chat_template.read_text(encoding="utf-8") if chat_template else None
    root = ctx.find_root().obj or {}
    target = local_files.config_file(config or root.get("config"))
    entries = []
    for file in files:
        facts = local_files.inspect(file, template)
        entries.append(
            local_files.entry(
                facts,
                name or local_files.model_name(file),
                context_length=context_length,
                parallel=parallel,
                threads=threads,
                chat_template=template,
            )
        )
    local_files.add_models(target, entries, replace=replace)
    for e in entries:
        console.print(
            f"added [bold]{e.name}[/bold] ({e.path}): context {e.context_length} tokens, "
            f"threads {e.threads or os.cpu_count()}, to {target}"
        )
