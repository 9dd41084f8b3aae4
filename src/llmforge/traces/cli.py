"""`llmforge traces ...`: read recorded calls."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from llmforge.core.cli import ConfigOption, JsonOption, print_rows, settings_for
from llmforge.core.db import open_engine
from llmforge.traces.store import TraceStore

app = typer.Typer(help="Recorded model calls.", no_args_is_help=True)


@app.command("list")
def list_traces(
    ctx: typer.Context,
    config: ConfigOption = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="How many, newest first.")
    ] = 20,
    model: Annotated[str | None, typer.Option(help="Only calls to this model.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List recent calls, newest first."""
    store = TraceStore(open_engine(settings_for(ctx, config).database))
    found = store.list(limit=limit, model=model)
    if as_json:
        print_rows([t.model_dump() for t in found], [], True)
        return
    rows = [
        {
            "time": dt.datetime.fromtimestamp(t.created_at).strftime("%Y-%m-%d %H:%M:%S"),
            "id": t.id[-12:],
            "kind": t.kind,
            "model": t.model,
            "status": t.status,
            "tokens": f"{t.prompt_tokens}+{t.completion_tokens}",
            "ms": f"{t.latency_ms:.0f}",
            "output": (t.error or t.output).replace("\n", " ")[:60],
        }
        for t in found
    ]
    print_rows(
        rows,
        ["time", "id", "kind", "model", "status", "tokens", "ms", "output"],
        False,
        title="Traces",
    )
