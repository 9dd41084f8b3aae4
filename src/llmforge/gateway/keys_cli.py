"""`llmforge keys ...`: create, list and revoke API keys in the configured database.

The key itself is printed once, by `create`; only its hash is stored. Keys are enforced by the
gateway only while a master key is set (LLMFORGE_MASTER_KEY). Commands are thin: the rules live in
`KeyStore`.
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from llmforge.core.cli import ConfigOption, JsonOption, print_rows, settings_for
from llmforge.core.db import open_engine
from llmforge.core.settings import Settings
from llmforge.gateway.keys import ApiKey, KeyStore

app = typer.Typer(help="API keys: scopes, rate limits and budgets.", no_args_is_help=True)


def _store(settings: Settings) -> KeyStore:
    return KeyStore(open_engine(settings.database))


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may use (default: all).")
    ] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[
        int | None, typer.Option(min=1, help="Tokens (prompt + completion) per minute.")
    ] = None,
    budget: Annotated[
        float | None, typer.Option(min=0.0, help="Total spend allowed, in USD.")
    ] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it (this is the only time it is shown)."""
    settings = settings_for(ctx, config)
    known = [m.name for m in settings.models] + [e.name for e in settings.embeddings]
    created = _store(settings).create(
        name,
        models=models.split(",") if models else None,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget,
        known_models=known,
        actor=_actor(),
    )
    if as_json:
        sys.stdout.write(json.dumps({**created.record.model_dump(), "key": created.key}) + "\n")
        return
    sys.stdout.write(created.key + "\n")  # alone on stdout, for `KEY=$(llmforge keys create ...)`
    notes = Console(stderr=True)
    notes.print(
        f"[dim]Key {created.record.id} ('{created.record.name}'). Store it now: it is not shown "
        "again. Clients send it as `Authorization: Bearer <key>`.[/dim]",
        highlight=False,
    )
    if not settings.master_key:
        notes.print(
            "[yellow]No master key is set, so the gateway does not check keys yet: set "
            "LLMFORGE_MASTER_KEY.[/yellow]"
        )


@app.command("list")
def list_keys(
    ctx: typer.Context,
    active: Annotated[bool, typer.Option("--active", help="Only keys that still work.")] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List keys with their limits and spend (never the keys themselves)."""
    found = _store(settings_for(ctx, config)).list(include_revoked=not active)
    if as_json:
        print_rows([k.model_dump() for k in found], [], True)
        return
    print_rows(
        [_row(k) for k in found],
        ["id", "name", "models", "limits", "budget", "spent", "status"],
        False,
        title="API keys",
    )


@app.command()
def revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id, from `llmforge keys list`.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key: it stops working at once and stays listed with its spend."""
    key = _store(settings_for(ctx, config)).revoke(key_id, actor=_actor())
    typer.echo(f"Revoked {key.id} ('{key.name}'); it had spent {_usd(key.spent_usd)}.")


def _row(k: ApiKey) -> dict[str, object]:
    limits = [f"{k.rpm} rpm" if k.rpm else "", f"{k.tpm} tpm" if k.tpm else ""]
    return {
        "id": k.id,
        "name": k.name,
        "models": ",".join(k.models) if k.models else "all",
        "limits": " ".join(x for x in limits if x) or "-",
        "budget": _usd(k.budget_usd),
        "spent": _usd(k.spent_usd),
        "status": "active" if k.active else "revoked",
    }


def _actor() -> str:
    """Who the audit log names for a change made from this machine's command line."""
    return f"cli:{getpass.getuser()}"
