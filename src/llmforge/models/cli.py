"""`llmforge models ...`: what models are configured."""

from __future__ import annotations

import typer

from llmforge.core.cli import ConfigOption, JsonOption, print_rows, settings_for

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
