"""`llmforge distill ...`: the flywheel end to end (`run FILE`) or stage by stage (`collect`,
`label`, `train`, `eval`, `export`, `route`), and the routing commands (`promote`, `rollback`,
`status`).

Command bodies load settings and the flywheel file, call the library and print one summary line
per stage; long stages show a rich progress bar on a terminal (training with its loss). A failed
gate exits 3, like `llmforge eval run --fail-under`; other errors are one line (exit 1).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from llmforge.core.cli import (
    ConfigOption,
    JsonOption,
    console,
    print_rows,
    progress_bar,
    run,
    settings_for,
)
from llmforge.core.db import open_engine
from llmforge.distill.config import load_flywheel
from llmforge.distill.evaluate import EvalResult
from llmforge.distill.flywheel import Flywheel, GateFailedError, Step, gate_line
from llmforge.distill.policy import promote, rollback
from llmforge.distill.serving import catalog_for
from llmforge.distill.store import DistillStore, StageRun
from llmforge.evals import GATE_FAILED_EXIT

app = typer.Typer(
    help="Distillation: traffic -> teacher labels -> LoRA student -> gate -> GGUF -> routing.",
    no_args_is_help=True,
)
FileArg = Annotated[Path, typer.Argument(help="the flywheel file (see examples/flywheel.yaml)")]
ForceOption = Annotated[bool, typer.Option("--force", help="Export even after a failed gate.")]


class RichReporter:
    """A progress bar per stage, on stderr, only on a terminal."""

    def __init__(self, show: bool) -> None:
        self.show = show

    @contextmanager
    def stage(self, label: str) -> Iterator[Step]:
        if not self.show:
            yield lambda done, total, loss: None
            return
        with progress_bar(on=console.__class__(stderr=True), transient=False) as bar:
            task = bar.add_task(label, total=None, extra="")

            def step(done: int, total: int, loss: float | None) -> None:
                shown = "" if loss is None else f"loss {loss:.4f}"
                bar.update(task, completed=done, total=total, extra=shown)

            yield step


@asynccontextmanager
async def _flywheel(ctx: typer.Context, file: Path, config: Path | None) -> AsyncIterator[Flywheel]:
    settings = settings_for(ctx, config)
    spec = load_flywheel(file)
    engine = open_engine(settings.database)
    catalog = catalog_for(settings, engine)
    try:
        yield Flywheel(spec, settings, engine, catalog, RichReporter(sys.stderr.isatty()))
    finally:
        await catalog.aclose()
        engine.dispose()


def _line(run_: StageRun) -> str:
    r = run_.result
    wall = f"{run_.wall_s:.1f}s" if run_.wall_s is not None else "-"
    details = {
        "collect": lambda: f"dataset {r.get('sha256', '')[:12]} {r.get('counts')}",
        "label": lambda: (
            f"{r.get('counts')} labelled, {r.get('dropped')} dropped, {r.get('calls')} teacher "
            f"calls ({r.get('cached')} cached), ${r.get('cost_usd', 0):.4f}"
        ),
        "train": lambda: (
            f"{r.get('steps')} steps, loss {_num(r.get('losses', [None])[0])} -> "
            f"{_num(r.get('final_loss'))}, adapter {r.get('adapter')}"
            + (f" (resumed from step {r['resumed_from']})" if r.get("resumed_from") else "")
        ),
        "eval": lambda: (
            f"student {_num(r.get('student_score'))} vs teacher {_num(r.get('teacher_score'))} "
            f"({r.get('metric')}, {r.get('reference')} reference): "
            + ("gate passed" if r.get("passed") else "gate failed")
        ),
        "export": lambda: (
            f"{r.get('model')} v{r.get('version')} {r.get('quant')}: "
            f"GGUF {_num(r.get('gguf_score'))} vs merged {_num(r.get('merged_score'))}, "
            f"{r.get('path')}"
        ),
    }[run_.stage]()
    return f"{run_.stage:8} {run_.id}  {details}  [{wall}]"


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _stage(ctx: typer.Context, file: Path, config: Path | None, name: str, **kw: Any) -> None:
    async def go() -> StageRun:
        async with _flywheel(ctx, file, config) as fw:
            method = {
                "collect": fw.collect,
                "label": fw.label,
                "train": fw.train,
                "eval": fw.evaluate,
                "export": fw.export,
            }[name]
            result: StageRun = await method(**kw)
            return result

    try:
        console.print(_line(run(go())), highlight=False)
    except GateFailedError as e:
        console.print(f"[red]{e.message}[/red]")
        raise typer.Exit(GATE_FAILED_EXIT) from None


@app.command("run")
def run_all(
    ctx: typer.Context, file: FileArg, config: ConfigOption = None, force: ForceOption = False
) -> None:
    """Every stage in turn; stops at a failed gate (exit 3). Done stages are skipped."""

    async def go() -> None:
        async with _flywheel(ctx, file, config) as fw:
            report = await fw.run(force)
        for stage_run in report.runs.values():
            console.print(_line(stage_run), highlight=False)
        if report.route is not None:
            r = report.route
            console.print(
                f"route    {r.model}: {r.share:.0%} to {r.student} (escalate under mean logprob "
                f"{r.min_logprob}), state {r.state}",
                highlight=False,
            )

    try:
        run(go())
    except GateFailedError as e:
        console.print(f"[red]{e.message}[/red]")
        raise typer.Exit(GATE_FAILED_EXIT) from None


@app.command()
def collect(ctx: typer.Context, file: FileArg, config: ConfigOption = None) -> None:
    """Collect the dataset (traces, JSONL or feedback) and split it."""
    _stage(ctx, file, config, "collect")


@app.command()
def label(ctx: typer.Context, file: FileArg, config: ConfigOption = None) -> None:
    """Label the newest dataset with the teacher (cached, resumable)."""
    _stage(ctx, file, config, "label")


@app.command()
def train(ctx: typer.Context, file: FileArg, config: ConfigOption = None) -> None:
    """LoRA-train the student on the newest labels (resumes from its last checkpoint)."""
    _stage(ctx, file, config, "train")


@app.command("eval")
def evaluate(ctx: typer.Context, file: FileArg, config: ConfigOption = None) -> None:
    """Student vs teacher on the test split; exit 3 when the gate fails."""

    async def go() -> StageRun:
        async with _flywheel(ctx, file, config) as fw:
            return await fw.evaluate()

    done = run(go())
    console.print(_line(done), highlight=False)
    result = EvalResult.model_validate(done.result)
    if not result.passed:
        console.print(f"[red]{gate_line(result)}[/red]")
        raise typer.Exit(GATE_FAILED_EXIT)


@app.command()
def export(
    ctx: typer.Context, file: FileArg, config: ConfigOption = None, force: ForceOption = False
) -> None:
    """Merge, write GGUF, quantize, check and register the student (after a passed gate)."""
    _stage(ctx, file, config, "export", force=force)


@app.command()
def route(ctx: typer.Context, file: FileArg, config: ConfigOption = None) -> None:
    """Start (or reset) the canary of the flywheel file's `route:` section."""

    async def go() -> None:
        async with _flywheel(ctx, file, config) as fw:
            r = fw.route()
        console.print(f"{r.model}: {r.share:.0%} of calls to {r.student} ({r.state})")

    run(go())


@app.command("promote")
def promote_cmd(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="the routed model name")],
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option("--force", help="Skip the online comparison.")] = False,
) -> None:
    """Send every call of MODEL to its student, if the online comparison holds."""
    store = _store(ctx, config)
    r = promote(store, model, force)
    console.print(f"{r.model}: every call to {r.student} (promoted)")


@app.command("rollback")
def rollback_cmd(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="the routed model name")],
    config: ConfigOption = None,
    version: Annotated[
        int | None, typer.Option("--version", help="Also re-activate this student version.")
    ] = None,
) -> None:
    """Send every call of MODEL back to MODEL itself, now."""
    store = _store(ctx, config)
    r = rollback(store, model, version)
    console.print(f"{r.model}: every call back to {r.model} (rolled back)")


@app.command()
def status(ctx: typer.Context, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Distilled models and their versions, routes with their online comparison, recent runs."""
    store = _store(ctx, config)
    versions = [
        {
            "model": v.name,
            "version": v.version,
            "status": v.status,
            "quant": v.quant,
            "gguf": v.scores.get("gguf"),
            "merged": v.scores.get("merged"),
            "teacher": v.scores.get("teacher"),
            "sha256": (v.sha256 or "")[:12],
            "dataset": v.lineage.dataset[:12],
            "train_run": v.lineage.train_run,
            "error": v.error,
        }
        for v in store.versions()
    ]
    routes = []
    for r in store.routes():
        c = store.comparison(r.model, r.updated_at)
        routes.append(
            {
                "model": r.model,
                "student": r.student,
                "share": r.share,
                "state": r.state,
                "compared": c.compared,
                "agreement": c.agreement,
                "escalations": c.escalations,
            }
        )
    runs = [
        {
            "id": x.id,
            "stage": x.stage,
            "status": x.status,
            "wall_s": None if x.wall_s is None else round(x.wall_s, 1),
            "error": x.error,
        }
        for x in store.list_runs(limit=20)
    ]
    if as_json:
        print_rows([{"versions": versions, "routes": routes, "runs": runs}], [], True)
        return
    print_rows(
        versions,
        [
            "model",
            "version",
            "status",
            "quant",
            "gguf",
            "merged",
            "teacher",
            "sha256",
            "dataset",
            "error",
        ],
        False,
        "models",
    )
    print_rows(
        routes,
        ["model", "student", "share", "state", "compared", "agreement", "escalations"],
        False,
        "routes",
    )
    print_rows(runs, ["id", "stage", "status", "wall_s", "error"], False, "runs")


def _store(ctx: typer.Context, config: Path | None) -> DistillStore:
    return DistillStore(open_engine(settings_for(ctx, config).database))
