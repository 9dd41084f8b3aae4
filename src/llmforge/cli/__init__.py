"""The `llmforge` command: one Typer app; each package contributes its sub-commands.

Errors become one line on stderr and exit code 1 (`--debug` or LLMFORGE_DEBUG=1 shows the
traceback).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from llmforge import __version__
from llmforge.agents.cli import app as agents_app
from llmforge.audit.cli import app as audit_app
from llmforge.core.cli import ConfigOption, settings_for
from llmforge.core.errors import LLMForgeError
from llmforge.distill.cli import app as distill_app
from llmforge.evals.cli import app as evals_app
from llmforge.gateway.cli import chat
from llmforge.gateway.keys_cli import app as keys_app
from llmforge.guard.cli import app as guard_app
from llmforge.kb.cli import app as kb_app
from llmforge.models.cli import app as models_app
from llmforge.traces.cli import app as traces_app

app = typer.Typer(
    name="llmforge",
    help="LLMForge: a self-hosted LLM platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models_app, name="models")
app.add_typer(traces_app, name="traces")
app.add_typer(keys_app, name="keys")
app.add_typer(kb_app, name="kb")
app.add_typer(evals_app, name="eval")
app.add_typer(agents_app, name="agent")
app.add_typer(distill_app, name="distill")
app.add_typer(guard_app, name="guard")
app.add_typer(audit_app, name="audit")
app.command()(chat)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: ConfigOption = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    ctx.obj = {"config": config, "debug": debug}


@app.command()
def serve(
    ctx: typer.Context,
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (server.port).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Gateway processes sharing the port (server.workers)."),
    ] = None,
) -> None:
    """Start the OpenAI-compatible API and the web UI."""
    import uvicorn

    from llmforge.ui import create_web_app

    settings = settings_for(ctx, config)
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    workers = workers or settings.server.workers
    app: Any = create_web_app(settings)  # built here too, so a bad config fails before forking
    if workers > 1:
        # each worker builds its own app from the same file and environment (cli/worker.py)
        if settings.config_path is not None:
            os.environ["LLMFORGE_CONFIG"] = str(settings.config_path.resolve())
        app = "llmforge.cli.worker:web_app"
        if not settings.redis_url:
            typer.echo(
                "warning: several workers without redis_url: each keeps its own rate-limit "
                "counters (a key's rpm/tpm is allowed once per worker) and memory cache",
                err=True,
            )
    typer.echo(
        f"LLMForge {__version__}: chat at http://{host}:{port}/  API at http://{host}:{port}/v1"
        + (f"  ({workers} workers)" if workers > 1 else "")
    )
    # No per-request work nobody reads: access log, Server/Date headers, X-Forwarded-* rewriting
    # (limits and budgets go by API key, not client address).
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        factory=workers > 1,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


def main() -> None:
    debug = "--debug" in sys.argv or os.environ.get("LLMFORGE_DEBUG") == "1"
    if "--debug" in sys.argv[2:]:  # accepted after the command too
        sys.argv = [a for a in sys.argv if a != "--debug"]
    try:
        app()
    except LLMForgeError as e:
        if debug:
            raise
        sys.stderr.write(f"error: {e.message}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
