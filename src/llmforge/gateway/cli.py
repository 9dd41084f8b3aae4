"""`llmforge chat`: one prompt through the same gateway path as the API (traced), streamed to the
terminal."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmforge.core.cli import ConfigOption, run, settings_for
from llmforge.core.db import open_engine
from llmforge.core.settings import Settings
from llmforge.core.types import Message, Sampling
from llmforge.gateway.call import Call
from llmforge.gateway.router import Router
from llmforge.gateway.service import Gateway
from llmforge.models import ModelCatalog
from llmforge.traces import TraceRecorder, TraceStore


def chat(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model name (default: first).")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    config: ConfigOption = None,
) -> None:
    """Ask a model and stream its answer."""
    settings = settings_for(ctx, config)
    name = model or (settings.models[0].name if settings.models else "")
    messages = ([Message(role="system", content=system)] if system else []) + [
        Message(role="user", content=prompt)
    ]
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=None, seed=seed)
    run(_chat(settings, name, messages, sampling))


async def _chat(
    settings: Settings, model: str, messages: list[Message], sampling: Sampling
) -> None:
    catalog = ModelCatalog.from_settings(settings)
    recorder = TraceRecorder(TraceStore(open_engine(settings.database)), settings.traces.queue_size)
    gateway = Gateway(
        catalog,
        recorder if settings.traces.enabled else None,
        router=Router(catalog, settings.router),
    )
    try:
        async for delta in gateway.stream(Call(model, messages, sampling, stream=True)):
            sys.stdout.write(delta.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        await gateway.drain()
        await recorder.stop()
        await catalog.aclose()
