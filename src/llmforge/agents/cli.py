"""`llmforge agent ...`: the configured agents, and runs on a running server.

    llmforge agent list                       agents from the config (built-ins included)
    llmforge agent run NAME "question"        start a run on the server, print its events
    llmforge agent pending                    runs waiting for approval
    llmforge agent show RUN                   one run
    llmforge agent approve RUN [--args CALL=JSON ...]
    llmforge agent reject RUN [--reason TEXT]

Runs live in the server (it owns the checkpoints, the models and the MCP sessions), so the run
commands are its HTTP API's client: `--url` (default: the config's `server.host`/`port`) and the
key from `--key` or `LLMFORGE_API_KEY` (the master key to approve or reject). It does not run
agents in this process.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import httpx
import typer

from llmforge.core.cli import ConfigOption, JsonOption, console, print_rows, settings_for
from llmforge.core.errors import InvalidRequestError, LLMForgeError

app = typer.Typer(
    help="Agents: list them; start, follow, approve or reject runs.", no_args_is_help=True
)

UrlOption = Annotated[str | None, typer.Option("--url", help="Server URL (default: from config)")]
KeyOption = Annotated[
    str | None, typer.Option("--key", help="API key (default: $LLMFORGE_API_KEY)")
]


def _client(ctx: typer.Context, config: Any, url: str | None, key: str | None) -> httpx.Client:
    settings = settings_for(ctx, config)
    base = url or f"http://{settings.server.host}:{settings.server.port}"
    token = key or os.environ.get("LLMFORGE_API_KEY")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(30, read=None))


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        raise LLMForgeError(f"{response.status_code}: {message}")
    return response.json()


def _find(client: httpx.Client, run_id: str) -> dict[str, Any]:
    for agent in _check(client.get("/v1/agents"))["data"]:
        r = client.get(f"/v1/agents/{agent['name']}/runs/{run_id}")
        if r.status_code == 200:
            found: dict[str, Any] = r.json()
            return found
    raise LLMForgeError(
        f"No run '{run_id}' on the server; list them with `llmforge agent pending`."
    )


def _print_run(run: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(run, indent=2, ensure_ascii=False))
        return
    console.print(
        f"[bold]{run['id']}[/] {run['agent']} {run['status']}"
        + (f" ({run['stop_reason']})" if run.get("stop_reason") else "")
    )
    for call in run.get("pending") or []:
        console.print(
            f"  waiting: {call['call_id']} {call['name']}({json.dumps(call['arguments'])})"
        )
    if run.get("output"):
        console.print(run["output"])


@app.command("list")
def list_command(
    ctx: typer.Context, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """The agents of the config (and the built-ins)."""
    from llmforge.agents.runtime import BUILTIN_AGENTS, needs_approval

    settings = settings_for(ctx, config)
    agents = {a.name: a for a in BUILTIN_AGENTS} | {a.name: a for a in settings.agents.definitions}
    rows = [
        {
            "name": a.name,
            "graph": a.graph,
            "model": a.model or (settings.models[0].name if settings.models else ""),
            "tools": ", ".join(t if isinstance(t, str) else t.name for t in a.tools),
            "approval": ", ".join(needs_approval(a, settings.agents.mcp_servers)),
        }
        for a in agents.values()
    ]
    print_rows(rows, ["name", "graph", "model", "tools", "approval"], as_json, "Agents")


@app.command("run")
def run_command(
    ctx: typer.Context,
    agent: str,
    text: str,
    thread: Annotated[str | None, typer.Option(help="continue this thread")] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Start a run on the server and print its events as they come."""
    body: dict[str, Any] = {"input": text, "stream": True}
    if thread:
        body["thread_id"] = thread
    with (
        _client(ctx, config, url, key) as client,
        client.stream("POST", f"/v1/agents/{agent}/runs", json=body) as r,
    ):
        if r.status_code >= 400:
            r.read()
            _check(r)
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            kind = event["type"]
            if kind == "tool_call":
                console.print(f"→ {event['name']}({json.dumps(event['arguments'])})")
            elif kind == "tool_result":
                console.print(f"← {event['text'][:300]}")
            elif kind == "message":
                console.print(event["text"])
            elif kind == "approval_needed":
                console.print(
                    f"[yellow]waiting for approval[/]: llmforge agent approve {event['run_id']}"
                )
            elif kind == "done":
                console.print(f"[bold]{event['status']}[/] {event.get('stop_reason') or ''}")


@app.command("pending")
def pending_command(
    ctx: typer.Context,
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Runs waiting for approval."""
    with _client(ctx, config, url, key) as client:
        runs = _check(client.get("/v1/agents/pending"))["data"]
    rows = [
        {
            "run": r["id"],
            "agent": r["agent"],
            "calls": "; ".join(
                f"{c['call_id']} {c['name']}({json.dumps(c['arguments'])})" for c in r["pending"]
            ),
        }
        for r in runs
    ]
    print_rows(rows, ["run", "agent", "calls"], as_json, "Waiting for approval")


@app.command("show")
def show_command(
    ctx: typer.Context,
    run_id: str,
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """One run: status, pending calls, answer."""
    with _client(ctx, config, url, key) as client:
        _print_run(_find(client, run_id), as_json)


@app.command("approve")
def approve_command(
    ctx: typer.Context,
    run_id: str,
    args: Annotated[
        list[str] | None,
        typer.Option("--args", help="CALL_ID=JSON: run that call with these arguments instead"),
    ] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Approve the calls a run waits on (optionally with edited arguments); it goes on."""
    edits: dict[str, Any] = {}
    for item in args or []:
        call_id, sep, raw = item.partition("=")
        try:
            value = json.loads(raw) if sep else None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise InvalidRequestError(f"--args {item!r}: give CALL_ID={{json object}}")
        edits[call_id] = value
    with _client(ctx, config, url, key) as client:
        run = _find(client, run_id)
        body = {"arguments": edits or None}
        done = _check(client.post(f"/v1/agents/{run['agent']}/runs/{run_id}/approve", json=body))
    _print_run(done, as_json)


@app.command("reject")
def reject_command(
    ctx: typer.Context,
    run_id: str,
    reason: Annotated[str | None, typer.Option(help="why (the run records it)")] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reject the calls a run waits on; the run ends as `rejected`."""
    with _client(ctx, config, url, key) as client:
        run = _find(client, run_id)
        done = _check(
            client.post(f"/v1/agents/{run['agent']}/runs/{run_id}/reject", json={"reason": reason})
        )
    _print_run(done, as_json)
