"""`llmforge guard ...`: scan a JSONL file with the configured guards, train the injection head,
work the review queue."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import orjson
import typer

from llmforge.core.cli import ConfigOption, JsonOption, print_rows, run, settings_for
from llmforge.core.db import open_engine
from llmforge.core.errors import ConfigError, InvalidRequestError
from llmforge.guard.base import SEVERITY, GuardContext, Verdict
from llmforge.guard.head import write_head
from llmforge.guard.pipeline import GuardPipeline
from llmforge.guard.review import ReviewQueue

app = typer.Typer(help="Guards: scan, train, review.", no_args_is_help=True)
review_app = typer.Typer(help="The review queue of guard hits.", no_args_is_help=True)
app.add_typer(review_app, name="review")

DATASETS = Path("../shared/datasets")


@app.command()
def scan(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL with a `text` field per line (`id` kept).")],
    config: ConfigOption = None,
    policy: Annotated[
        str | None, typer.Option(help="Run this policy's input guards (default: every guard).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """One verdict per line: id, action, score, guard (the most severe verdict of the guards)."""
    from llmforge.models import ModelCatalog

    settings = settings_for(ctx, config)
    if not settings.guard.guards:
        raise ConfigError(
            "No guards configured: add `guard.guards` to llmforge.yaml (see docs/safety.md)."
        )
    rows = _read_texts(file)

    async def go() -> list[dict[str, object]]:
        catalog = ModelCatalog.from_settings(settings)
        pipeline = GuardPipeline(
            settings.guard, GuardContext(embedder=catalog.embedder, chat=catalog.chat)
        )
        try:
            out = []
            for row_id, text in rows:
                verdicts = await pipeline.scan(text, policy=policy)
                out.append(_line(row_id, verdicts))
            return out
        finally:
            await pipeline.aclose()
            await catalog.aclose()

    results = run(go())
    if as_json:
        for r in results:
            sys.stdout.write(orjson.dumps(r).decode() + "\n")
        return
    print_rows(results, ["id", "action", "score", "guard", "code"], False, title="Verdicts")


def _read_texts(file: Path) -> list[tuple[str | None, str]]:
    rows: list[tuple[str | None, str]] = []
    try:
        lines = file.read_bytes().splitlines()
    except OSError as e:
        raise InvalidRequestError(f"{file}: cannot be read: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise InvalidRequestError(f"{file}:{number}: not JSON: {e}") from None
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            raise InvalidRequestError(f"{file}:{number}: needs a string field `text`")
        row_id = value.get("id")
        rows.append((None if row_id is None else str(row_id), value["text"]))
    return rows


def _line(row_id: str | None, verdicts: list[Verdict]) -> dict[str, object]:
    worst = max(verdicts, key=lambda v: (SEVERITY[v.action], v.score))
    line: dict[str, object] = {
        "action": worst.action,
        "score": round(worst.score, 4),
        "guard": worst.guard,
        "code": worst.code or None,
    }
    return {"id": row_id, **line} if row_id is not None else line


@app.command()
def train(
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            help="Labelled JSONL files (text, label, source); the first weighs most. Default: "
            "the deepset train split and guard-extra under ../shared/datasets.",
        ),
    ] = None,
    extra: Annotated[
        list[Path] | None,
        typer.Option("--extra", help="More labelled rows, e.g. `guard review export` output."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Head file to write.")] = Path(
        "injection_head.json"
    ),
    onnx_dir: Annotated[Path, typer.Option(help="ONNX export cache.")] = Path(".llmforge/onnx"),
) -> None:
    """Build the injection classifier's head (embedding + character n-grams -> logistic
    regression), threshold chosen by cross-validation; prints its SHA-256."""
    from llmforge.guard.injection import builtin_embedder
    from llmforge.guard.train import embed_texts, fit_head, load_training

    paths = list(data or [])
    if not paths:
        paths = [
            DATASETS / "prompt-injection-deepset/train.jsonl",
            DATASETS / "guard-extra/train.jsonl",
        ]
    paths += list(extra or [])
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InvalidRequestError(f"training data not found: {', '.join(missing)}; pass --data")
    training = load_training(paths)
    typer.echo(f"{len(training.texts)} rows ({sum(training.labels)} injection); embedding ...")

    async def embed() -> np.ndarray:
        embedder = builtin_embedder(onnx_dir)
        try:
            return await embed_texts(embedder, training.texts)
        finally:
            await embedder.aclose()

    vectors = run(embed())
    head = fit_head(training, vectors)
    digest = write_head(head, out)
    typer.echo(f"wrote {out}: threshold {head.threshold}, cv {head.recipe.cv}, sha256 {digest}")


def _queue(ctx: typer.Context, config: Path | None) -> ReviewQueue:
    return ReviewQueue(open_engine(settings_for(ctx, config).database))


@review_app.command("list")
def review_list(
    ctx: typer.Context,
    config: ConfigOption = None,
    status: Annotated[str, typer.Option(help="pending, decided or all.")] = "pending",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1)] = 20,
    as_json: JsonOption = False,
) -> None:
    """Queued guard hits and sampled texts, newest first."""
    if status not in ("pending", "decided", "all"):
        raise InvalidRequestError("--status is pending, decided or all")
    chosen: Literal["pending", "decided"] | None = None if status == "all" else status  # type: ignore[assignment]
    items = _queue(ctx, config).list(status=chosen, limit=limit)
    rows = [i.model_dump(mode="json") for i in items]
    for r in rows:
        r["text"] = r["text"] if as_json else r["text"].replace("\n", " ")[:60]
    print_rows(
        rows,
        ["id", "guard", "action", "score", "judge_score", "status", "decision", "text"],
        as_json,
        title="Review queue",
    )


@review_app.command("decide")
def review_decide(
    ctx: typer.Context,
    review_id: Annotated[str, typer.Argument(help="The item's id (rv_...).")],
    decision: Annotated[str, typer.Argument(help="confirm (the guard was right) or override.")],
    config: ConfigOption = None,
    by: Annotated[str, typer.Option(help="Who decides (recorded in the audit log).")] = "cli",
    note: Annotated[str | None, typer.Option(help="Why.")] = None,
) -> None:
    """Confirm or override a guard's decision; audited."""
    if decision not in ("confirm", "override"):
        raise InvalidRequestError("decision is confirm or override")
    item = _queue(ctx, config).decide(review_id, decision, by=by, note=note)  # type: ignore[arg-type]
    typer.echo(f"{item.id}: {item.decision} (label {'hit' if item.label else 'clean'})")


@review_app.command("export")
def review_export(
    ctx: typer.Context,
    config: ConfigOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
    guard_type: Annotated[str, typer.Option(help="Only items of this guard type.")] = "injection",
) -> None:
    """Decided items as labelled JSONL rows for `llmforge guard train --extra`."""
    lines = list(_queue(ctx, config).export_labelled(guard_type))
    if out is None:
        sys.stdout.write(b"".join(lines).decode())
        return
    out.write_bytes(b"".join(lines))
    typer.echo(f"{len(lines)} rows written to {out}", err=True)
