"""`llmforge eval ...`: run evaluations, gate on them, compare runs, write reports, build datasets.

Command bodies parse options, call the library and print; errors propagate as `LLMForgeError`s,
which `llmforge.cli.main` prints on one line (exit 1). A failed `--fail-under` gate exits 3.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

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
from llmforge.core.errors import InvalidRequestError
from llmforge.core.settings import Settings
from llmforge.core.types import Sampling
from llmforge.evals.base import JUDGE_METRICS, MetricOptions, build_metrics
from llmforge.evals.compare import Comparison, compare_runs
from llmforge.evals.dataset import (
    TraceFilter,
    cases_from_traces,
    load_dataset,
    parse_since,
    write_dataset,
)
from llmforge.evals.gate import GATE_FAILED_EXIT, gate_failures, parse_thresholds
from llmforge.evals.report import export_json, render_html
from llmforge.evals.runner import ModelTarget, RetrievalTarget, RunSpec, Target, run_eval
from llmforge.evals.store import EvalStore, RunInfo
from llmforge.models import ModelCatalog

app = typer.Typer(
    help="Evaluations: run, compare, report, list; build datasets.", no_args_is_help=True
)
dataset_app = typer.Typer(help="Build datasets: from traces, or synthesized from a KB.")
app.add_typer(dataset_app, name="dataset")

MODEL_METRICS = ["exact_match", "token_f1", "rouge_l"]
RETRIEVAL_METRICS = ["recall_at_k", "mrr", "ndcg_at_k"]
RETRIEVAL_NAMES = set(RETRIEVAL_METRICS)
err = Console(stderr=True)


def _names(values: list[str] | None) -> list[str]:
    """`--metrics a,b --metrics c` -> [a, b, c]."""
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


@contextmanager
def _progress(label: str, show: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not show:
        yield None
        return
    with progress_bar(on=err) as bar:
        task = bar.add_task(label, total=None, extra="")

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[EvalStore]:
    engine = open_engine(settings.database)
    try:
        yield EvalStore(engine)
    finally:
        engine.dispose()


@app.command("run")
def run_command(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Argument(help="JSONL file of cases.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Chat model to test.")] = None,
    kb: Annotated[
        str | None, typer.Option("--kb", help="Test a knowledge base's retrieval instead.")
    ] = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            help="Comma-separated (repeatable). Default: exact_match,token_f1,rouge_l "
            "(with --kb: recall_at_k,mrr,ndcg_at_k).",
        ),
    ] = None,
    judge: Annotated[str | None, typer.Option(help="Chat model that judges.")] = None,
    embedder: Annotated[
        str | None, typer.Option(help="Embedding model for embedding_similarity.")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Judge samples per case.")] = 1,
    rubric: Annotated[str | None, typer.Option(help="Criteria for the rubric metric.")] = None,
    json_schema: Annotated[
        Path | None, typer.Option(help="JSON schema file for json_valid.")
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Cut-off for recall@k / nDCG@k.")] = 5,
    max_tokens: Annotated[int, typer.Option(min=1, help="Answer length limit.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Cases at a time.")] = 4,
    run_id: Annotated[
        str | None, typer.Option(help="Run id (default: from dataset + options; resumes).")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Generate again.")] = False,
    fail_under: Annotated[
        list[str] | None,
        typer.Option("--fail-under", help="METRIC=VALUE; exit 3 if the mean is below."),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the HTML report here.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a model (or a KB's retrieval) on a dataset; re-running resumes the run."""
    if (model is None) == (kb is None):
        raise InvalidRequestError("Give exactly one of --model NAME or --kb NAME.")
    names = _names(metrics) or (RETRIEVAL_METRICS if kb else MODEL_METRICS)
    thresholds = parse_thresholds(fail_under or [], names)
    if JUDGE_METRICS & set(names) and judge is None:
        raise InvalidRequestError(
            f"{', '.join(sorted(JUDGE_METRICS & set(names)))}: needs a judge; pass --judge NAME "
            "(a chat model in llmforge.yaml)."
        )
    settings = settings_for(ctx, config)
    data = load_dataset(dataset)
    schema = json.loads(json_schema.read_text(encoding="utf-8")) if json_schema else None
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature)
    options: dict[str, Any] = {}
    if model:
        options["sampling"] = sampling.model_dump(exclude_none=True, exclude_defaults=True)
    if kb or RETRIEVAL_NAMES & set(names):
        options["k"] = k
    if JUDGE_METRICS & set(names):
        options.update(samples=samples, rubric=rubric)
    if "embedding_similarity" in names:
        options["embedder"] = embedder or (
            settings.embeddings[0].name if settings.embeddings else None
        )
    if schema is not None:
        options["json_schema"] = schema
    spec = RunSpec(
        dataset=data,
        target=f"kb:{kb}" if kb else str(model),
        metrics=names,
        judge=judge,
        options=options,
        concurrency=concurrency,
        run_id=run_id,
        use_cache=not no_cache,
    )
    mopts = MetricOptions(k=k, samples=samples, rubric=rubric, extra={"json_schema": schema})
    if not as_json:
        err.print(f"run {spec.run_id or spec.default_id()}: {len(data.cases)} cases")

    async def go() -> tuple[RunInfo, str | None]:
        catalog = ModelCatalog.from_settings(settings)
        kbs = None
        try:
            target: Target
            if kb:
                from llmforge.kb import KnowledgeBases

                kbs = KnowledgeBases(settings)
                base = await kbs.open(kb)

                async def search(query: str, n: int) -> list[tuple[str, str]]:
                    return [(h.chunk_id, h.source) for h in await base.search(query, k=n)]

                target = RetrievalTarget(spec.target, search, k)
            else:
                assert model is not None
                target = ModelTarget(model, catalog.chat(model), catalog.config(model), sampling)
            if judge:
                mopts.judge = catalog.chat(judge)
            if options.get("embedder"):
                mopts.embedder = catalog.embedder(options["embedder"])
            built = build_metrics(names, mopts)
            async with _store(settings) as store:
                with _progress("cases", not as_json and sys.stderr.isatty()) as update:
                    info = await run_eval(spec, store, target, built, update)
                html = render_html(info, store.results(info.id)) if report else None
            return info, html
        finally:
            if kbs is not None:
                await kbs.aclose()
            await catalog.aclose()

    info, html = run(go())
    if report and html is not None:
        report.write_text(html, encoding="utf-8")
    failures = gate_failures(info.summary, thresholds)
    if as_json:
        sys.stdout.write(
            json.dumps({**info.model_dump(mode="json"), "gate_failures": failures}, indent=2) + "\n"
        )
    else:
        _print_summary(info)
        if report:
            err.print(f"report: {report}")
    if failures:
        sys.stderr.write("gate failed: " + "; ".join(failures) + "\n")
        raise typer.Exit(GATE_FAILED_EXIT)


def _print_summary(info: RunInfo) -> None:
    table = Table(title=f"{info.id} ({info.target}, {info.done}/{info.cases} cases)")
    for col in ("metric", "mean", "std", "spread", "scored", "errors"):
        table.add_column(col)
    for name in info.metrics:
        s = info.summary.get(name)
        if s is None:
            continue
        table.add_row(
            name,
            "-" if s.mean is None else f"{s.mean:.4f}",
            f"{s.std:.4f}",
            f"{s.spread:.4f}",
            str(s.scored),
            str(s.errors),
        )
    console.print(table)


@app.command("compare")
def compare_command(
    ctx: typer.Context,
    run_a: Annotated[str, typer.Argument(help="Baseline run id.")],
    run_b: Annotated[str, typer.Argument(help="Candidate run id.")],
    report: Annotated[Path | None, typer.Option(help="Write an HTML report of B vs A.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """B minus A per metric over shared cases, with paired bootstrap 95% intervals."""
    settings = settings_for(ctx, config)

    async def go() -> tuple[Comparison, str | None]:
        async with _store(settings) as store:
            a, b = store.get_run(run_a), store.get_run(run_b)
            results_b = store.results(run_b)
            shared = [m for m in a.metrics if m in b.metrics]
            comparison = compare_runs(run_a, store.results(run_a), run_b, results_b, shared)
            html = render_html(b, results_b, comparison) if report else None
            return comparison, html

    comparison, html = run(go())
    if report and html is not None:
        report.write_text(html, encoding="utf-8")
    if as_json:
        sys.stdout.write(comparison.model_dump_json(indent=2) + "\n")
        return
    rows = [
        {
            "metric": m.metric,
            "pairs": m.pairs,
            "A": _f(m.mean_a),
            "B": _f(m.mean_b),
            "B-A": _f(m.delta, signed=True),
            "95% CI": f"[{_f(m.ci_low, signed=True)}, {_f(m.ci_high, signed=True)}]",
            "significant": "yes" if m.significant else "no",
        }
        for m in comparison.metrics
    ]
    print_rows(
        rows,
        ["metric", "pairs", "A", "B", "B-A", "95% CI", "significant"],
        False,
        title=f"{run_b} vs {run_a} ({comparison.shared_cases} shared cases)",
    )


def _f(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else (f"{x:+.4f}" if signed else f"{x:.4f}")


@app.command("report")
def report_command(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file.")] = Path(
        "eval-report.html"
    ),
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Also export JSON.")] = None,
    baseline: Annotated[
        str | None, typer.Option("--compare-to", help="Baseline run for A/B deltas.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write a self-contained HTML report (and optionally a JSON export) of a run."""
    settings = settings_for(ctx, config)

    async def go() -> tuple[str, dict[str, Any]]:
        async with _store(settings) as store:
            info, results = store.get_run(run_id), store.results(run_id)
            comparison = None
            if baseline:
                base = store.get_run(baseline)
                shared = [m for m in base.metrics if m in info.metrics]
                comparison = compare_runs(
                    baseline, store.results(baseline), run_id, results, shared
                )
            return render_html(info, results, comparison), export_json(info, results, comparison)

    html, data = run(go())
    output.write_text(html, encoding="utf-8")
    if json_out:
        json_out.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    typer.echo(str(output))


@app.command("list")
def list_command(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1)] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recent runs, newest first."""
    settings = settings_for(ctx, config)

    async def go() -> list[RunInfo]:
        async with _store(settings) as store:
            return store.list_runs(limit)

    runs = run(go())
    rows = [
        {
            **r.model_dump(mode="json", include={"id", "target", "dataset", "status", "judge"}),
            "cases": f"{r.done}/{r.cases}",
            "summary": {k: v.mean for k, v in r.summary.items()},
            "scores": ", ".join(
                f"{k}={v.mean:.3f}" for k, v in r.summary.items() if v.mean is not None
            ),
        }
        for r in runs
    ]
    if as_json:
        for row in rows:
            row.pop("scores")
    print_rows(rows, ["id", "target", "dataset", "cases", "status", "scores"], as_json)


@dataset_app.command("from-traces")
def from_traces_command(
    ctx: typer.Context,
    output: Annotated[Path, typer.Argument(help="JSONL file to write.")],
    model: Annotated[str | None, typer.Option(help="Only calls to this model.")] = None,
    since: Annotated[str | None, typer.Option(help="7d, 12h or an ISO date.")] = None,
    until: Annotated[str | None, typer.Option(help="7d, 12h or an ISO date.")] = None,
    status: Annotated[str, typer.Option(help="ok, error, cancelled or any.")] = "ok",
    contains: Annotated[str | None, typer.Option(help="Last user turn contains this.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 1000,
    config: ConfigOption = None,
) -> None:
    """Recorded chat calls as cases: the conversation as input, the answer as expected."""
    settings = settings_for(ctx, config)
    flt = TraceFilter(
        model=model,
        since=parse_since(since) if since else None,
        until=parse_since(until) if until else None,
        status=None if status == "any" else status,
        contains=contains,
        limit=limit,
    )
    engine = open_engine(settings.database)
    try:
        cases = cases_from_traces(engine, flt)
    finally:
        engine.dispose()
    n = write_dataset(output, cases)
    typer.echo(f"{n} cases -> {output}")


@dataset_app.command("synthesize")
def synthesize_command(
    ctx: typer.Context,
    output: Annotated[Path, typer.Argument(help="JSONL file to write.")],
    kb: Annotated[str, typer.Option("--kb", help="Knowledge base to draw passages from.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Chat model that writes.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Cases to write.")] = 10,
    config: ConfigOption = None,
) -> None:
    """Question/answer cases written by a model from a knowledge base's passages."""
    from llmforge.evals.synthesis import SynthesisReport, synthesize
    from llmforge.kb import KnowledgeBases

    settings = settings_for(ctx, config)

    async def go(update: Callable[[int, int], None] | None) -> SynthesisReport:
        catalog = ModelCatalog.from_settings(settings)
        kbs = KnowledgeBases(settings)
        try:
            base = await kbs.open(kb)
            return await synthesize(base, catalog.chat(model), n, model_name=model, progress=update)
        finally:
            await kbs.aclose()
            await catalog.aclose()

    with _progress("passages", sys.stderr.isatty()) as update:
        result = run(go(update))
    count = write_dataset(output, result.cases)
    typer.echo(
        f"{count} cases -> {output} ({result.passages} passages, {result.failed} failed); "
        "review them before gating on them"
    )
