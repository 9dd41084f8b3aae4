"""Shared plumbing for every package's CLI commands: the `--config` option, settings, async, output.

Commands stay short: they load settings through `settings_for`, call library code through `run`, and
print lists as rich tables or `--json`. Errors are not caught here; `llmforge.cli.main` turns them
into one line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from llmforge.core.settings import Settings, load_settings

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="llmforge.yaml to use (default: $LLMFORGE_CONFIG or ./llmforge.yaml)",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

console = Console()


def progress_bar(*, on: Console | None = None, transient: bool = True) -> Progress:
    """The one look of long work in every command: the task's description, a bar, done / total,
    the task's `extra` field (add tasks with `extra=""`: a loss, the current file) and the time
    elapsed; on `on` (default: stdout's console)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        console=on or console,
        transient=transient,
    )


def settings_for(ctx: typer.Context, config: Path | None = None) -> Settings:
    """Settings from the command's --config, else the global --config, else the default lookup."""
    root = ctx.find_root()
    root.obj = root.obj or {}
    key = str(config or root.obj.get("config") or "")
    cache = root.obj.setdefault("settings", {})
    if key not in cache:
        cache[key] = load_settings(config or root.obj.get("config"))
    settings: Settings = cache[key]
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The one sync -> async bridge of the CLI."""
    return asyncio.run(coro)


def print_rows(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool, title: str | None = None
) -> None:
    if as_json:
        sys.stdout.write(json.dumps(list(rows), ensure_ascii=False, indent=2, default=str) + "\n")
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)
