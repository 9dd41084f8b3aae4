"""`llmforge audit ...`: check the audit log, export it for an auditor, list recent rows."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmforge.audit.export import export, verify_file
from llmforge.audit.log import AuditLog, Verification
from llmforge.core.cli import ConfigOption, JsonOption, print_rows, settings_for
from llmforge.core.db import open_engine

app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)


def _log(ctx: typer.Context, config: Path | None) -> AuditLog:
    return AuditLog(open_engine(settings_for(ctx, config).database))


@app.command()
def verify(
    ctx: typer.Context,
    config: ConfigOption = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Check an exported file instead of the database.")
    ] = None,
    expect_head: Annotated[
        str | None,
        typer.Option("--expect-head", help="A head hash kept from an earlier verify or export."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Walk the hash chain; name every edited, deleted or reordered row. Exit 1 if any."""
    if file is not None:
        result = verify_file(file, expect_head=expect_head)
    else:
        result = _log(ctx, config).verify(expect_head=expect_head)
    _report(result, as_json)
    if not result.ok:
        raise typer.Exit(1)


def _report(result: Verification, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    for problem in result.problems:
        typer.echo(f"{problem.kind}: {problem.message}")
    state = "OK" if result.ok else f"TAMPERED ({len(result.problems)} problem(s))"
    typer.echo(f"{state}: {result.rows} rows; head {result.head_seq} {result.head_hash}")


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    config: ConfigOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")
    ] = None,
    after: Annotated[int, typer.Option(help="Only rows after this sequence number.")] = 0,
) -> None:
    """Write the log as JSON lines (hashes included) with a trailer holding the head hash."""
    log = _log(ctx, config)
    if out is None:
        export(log, sys.stdout, after=after)
        return
    with out.open("w", encoding="utf-8") as f:
        rows = export(log, f, after=after)
    typer.echo(f"{rows} rows written to {out}", err=True)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many, newest.")] = 20,
    kind: Annotated[str | None, typer.Option(help="Only rows of this kind.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The newest rows of the log."""
    log = _log(ctx, config)
    head, _ = log.head()
    rows = log.entries(after=max(head - limit, 0) if kind is None else 0, kind=kind)[-limit:]
    print_rows(
        [r.model_dump(mode="json") for r in rows],
        ["seq", "kind", "actor", "subject", "data"],
        as_json,
        title="Audit log",
    )
