"""The flywheel: the stages run one after another, each recorded, each resumable.

    collect -> label -> train -> eval (gate) -> export -> route

Each stage is a `distill_runs` row whose id is derived from its parent run and its own section of
the flywheel file, so running the same file again skips what is done, resumes what was killed
(label cache, training checkpoints, evals runs) and redoes only what changed. A stage reads the
newest finished run of the stage before it. Collect is the exception: it reads its source every
time, and a dataset with the same content is the same run.

`run()` goes end to end and stops at a failed gate (nothing is exported or routed). Artifacts live
under `distill.path/<name>/`. This module wires stages to models and stores; the stages' logic is
in their own modules.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from sqlalchemy.engine import Engine

from llmforge.core.dispatch import open_executor
from llmforge.core.errors import InvalidRequestError, LLMForgeError
from llmforge.core.settings import Settings
from llmforge.core.types import Sampling
from llmforge.distill.collect import (
    SPLITS,
    DatasetInfo,
    Example,
    build_dataset,
    from_feedback,
    from_jsonl,
    from_traces,
    read_split,
    write_split,
)
from llmforge.distill.config import FlywheelSpec
from llmforge.distill.evaluate import (
    ChatTarget,
    EvalResult,
    evaluate,
    latency_p50,
    mean_of,
    test_dataset,
)
from llmforge.distill.evaluate import score as score_run
from llmforge.distill.export import (
    ExportResult,
    convert,
    converter_dir,
    gguf_config,
    install,
    merge,
    quantize,
)
from llmforge.distill.label import LabelResult, label_examples
from llmforge.distill.policy import open_route
from llmforge.distill.store import DistillStore, Lineage, ModelVersion, Route, Stage, StageRun
from llmforge.distill.student import TransformersChatModel, base_folder, load_student
from llmforge.distill.train import TrainResult, train
from llmforge.evals import EvalStore
from llmforge.models import ModelCatalog
from llmforge.models.base import chat_models

Step = Callable[[int, int, float | None], None]
"""(done, total, last loss or None)"""


class Reporter(Protocol):
    """Shows long work (the CLI's rich progress bars)."""

    def stage(self, label: str) -> AbstractContextManager[Step]: ...


class QuietReporter:
    @contextmanager
    def stage(self, label: str) -> Iterator[Step]:
        yield lambda done, total, loss: None


class GateFailedError(InvalidRequestError):
    """The student did not reach the gate; nothing is exported."""

    code = "gate_failed"


class FlywheelReport(BaseModel):
    """What `run()` did: each stage's run and wall time."""

    runs: dict[str, StageRun]
    route: Route | None = None

    def wall_s(self) -> dict[str, float | None]:
        return {stage: run.wall_s for stage, run in self.runs.items()}


class Flywheel:
    def __init__(
        self,
        spec: FlywheelSpec,
        settings: Settings,
        engine: Engine,
        catalog: ModelCatalog,
        reporter: Reporter | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.engine = engine
        self.catalog = catalog
        self.store = DistillStore(engine)
        self.evals = EvalStore(engine)
        self.reporter = reporter or QuietReporter()
        self.root = Path(settings.distill.path).expanduser() / spec.name

    # -- stages ---------------------------------------------------------------------------

    async def collect(self) -> StageRun:
        spec = self.spec.collect
        started = time.perf_counter()
        if spec.source == "jsonl":
            assert spec.path is not None
            examples = from_jsonl(Path(spec.path).expanduser(), spec)
            source = f"jsonl:{spec.path}"
        elif spec.source == "feedback":
            examples = from_feedback(self.store, spec)
            source = f"feedback:{spec.route}"
        else:
            examples = await asyncio.to_thread(from_traces, self.engine, spec)
            source = f"traces:{spec.model or '*'}"
        test = from_jsonl(Path(spec.test_path).expanduser(), spec) if spec.test_path else None
        info = build_dataset(examples, spec, self.root / "datasets", source, test)
        run_id = f"{self.spec.name}-collect-{info.sha256[:12]}"
        if (found := self.store.find_run(run_id)) is not None and found.status == "done":
            return found
        self.store.start_run(run_id, self.spec.name, "collect", None)
        self.store.finish_run(
            run_id, "done", time.perf_counter() - started, info.model_dump(mode="json")
        )
        return self.store.get_run(run_id)

    async def label(self) -> StageRun:
        parent = self._latest("collect")
        info = DatasetInfo.model_validate(parent.result)

        async def body(run_id: str) -> BaseModel:
            splits = {s: read_split(Path(info.folder), s) for s in SPLITS}
            teacher = self.catalog.chat(self.spec.teacher)
            config = self.catalog.config(self.spec.teacher)
            judge = self.catalog.chat(self.spec.label.judge) if self.spec.label.judge else None
            executor = open_executor(self.settings.executor)
            try:
                with self.reporter.stage("label") as step:
                    labelled, result = await label_examples(
                        splits,
                        info.sha256,
                        self.spec.teacher,
                        teacher,
                        config,
                        self.spec.label,
                        self.store,
                        judge,
                        lambda done, total: step(done, total, None),
                        executor,
                    )
            finally:
                await executor.aclose()
            folder = self.root / "labels" / run_id
            for split, examples in labelled.items():
                write_split(folder, split, examples)
            return result.model_copy(update={"folder": str(folder)})

        return await self._stage("label", parent, self.spec.label, body)

    async def train(self) -> StageRun:
        parent = self._latest("label")
        labels = LabelResult.model_validate(parent.result)
        base_spec = self.spec.student

        async def body(run_id: str) -> BaseModel:
            examples = read_split(Path(labels.folder), "train")
            with self.reporter.stage("prepare base") as step:
                step(0, 1, None)
                base = await asyncio.to_thread(base_folder, base_spec, self._base_cache())
                step(1, 1, None)
            with self.reporter.stage("train") as step:
                return await asyncio.to_thread(
                    train, examples, base, self.spec.train, self.root / "train" / run_id, step
                )

        return await self._stage(
            "train", parent, {"student": base_spec, "train": self.spec.train}, body
        )

    async def evaluate(self) -> StageRun:
        parent = self._latest("train")
        trained = TrainResult.model_validate(parent.result)
        labels = self._labels_of(parent)

        async def body(run_id: str) -> BaseModel:
            test = read_split(Path(labels.folder), "test")
            model, tokenizer = await asyncio.to_thread(
                load_student, Path(trained.base), Path(trained.adapter)
            )
            with self.reporter.stage("eval") as step:
                return await evaluate(
                    test,
                    TransformersChatModel(model, tokenizer),
                    self.spec.eval,
                    self.evals,
                    run_id,
                    self.spec.teacher,
                    lambda done, total: step(done, total, None),
                )

        return await self._stage("eval", parent, self.spec.eval, body)

    async def export(self, force: bool = False) -> StageRun:
        """Merge, convert, quantize, check and register; refuses after a failed gate unless
        forced. A failure registers a `failed` version and leaves the active one serving."""
        parent = self._latest("eval")
        result = EvalResult.model_validate(parent.result)
        if not result.passed and not force:
            raise GateFailedError(gate_line(result) + "; nothing exported (or pass --force).")
        train_run = self.store.get_run(parent.parent or "")
        trained = TrainResult.model_validate(train_run.result)
        labels = self._labels_of(train_run)
        label_run = self.store.get_run(train_run.parent or "")
        collect_run = self.store.get_run(label_run.parent or "")
        name = self.spec.student_name
        spec = self.spec.export

        async def body(run_id: str) -> BaseModel:
            version = self.store.next_version(name)
            work = self.root / "export" / run_id
            final = self.root / "models" / f"{name}-v{version}.{spec.quant}.gguf"
            lineage = Lineage(
                dataset=DatasetInfo.model_validate(collect_run.result).sha256,
                label_run=label_run.id,
                train_run=train_run.id,
                eval_run=parent.id,
                export_run=run_id,
                base=self.spec.student,
                teacher=self.spec.teacher,
            )
            out = ExportResult(model=name, version=version, quant=spec.quant)
            try:
                converter = converter_dir(self.settings.distill.converter_dir)
                with self.reporter.stage("export") as step:
                    step(0, 4, None)
                    merged = await asyncio.to_thread(
                        merge, Path(trained.base), Path(trained.adapter), work / "merged"
                    )
                    step(1, 4, None)
                    f16 = await asyncio.to_thread(convert, merged, work / "f16.gguf", converter)
                    step(2, 4, None)
                    quantized = work / f"{spec.quant}.gguf"
                    await asyncio.to_thread(quantize, f16, quantized, spec.quant)
                    step(3, 4, None)
                gguf_score, p50 = await self._score_gguf(quantized, labels.folder, run_id)
                loss = (
                    None
                    if result.student_score is None or gguf_score is None
                    else (result.student_score - gguf_score)
                )
                out = out.model_copy(
                    update={
                        "merged_score": result.student_score,
                        "gguf_score": gguf_score,
                        "quant_loss": loss,
                        "gguf_latency_p50_ms": p50,
                    }
                )
                if gguf_score is None or (loss is not None and loss > spec.max_quant_loss):
                    raise InvalidRequestError(
                        f"the {spec.quant} GGUF scores {gguf_score} against the merged model's "
                        f"{result.student_score} (loss over max_quant_loss {spec.max_quant_loss}); "
                        "try a larger quant (q8_0, f16)"
                    )
                sha, size = install(quantized, final)
            except LLMForgeError as e:
                failed = out.model_copy(update={"status": "failed", "error": e.message})
                self.store.add_version(_version(failed, lineage, spec.context_length, None))
                raise
            finally:
                for leftover in ("merged", "f16.gguf"):
                    _remove(work / leftover)
            done = out.model_copy(update={"path": str(final), "sha256": sha, "bytes": size})
            self.store.add_version(
                _version(
                    done,
                    lineage.model_copy(update={"file_sha256": sha}),
                    spec.context_length,
                    result.teacher_score,
                )
            )
            return done

        return await self._stage("export", parent, self.spec.export, body)

    def route(self) -> Route:
        """The canary policy of the flywheel file on the routed model."""
        return open_route(
            self.store, self.spec.routed_model, self.spec.student_name, self.spec.route
        )

    async def run(self, force: bool = False) -> FlywheelReport:
        runs: dict[str, StageRun] = {}
        runs["collect"] = await self.collect()
        runs["label"] = await self.label()
        runs["train"] = await self.train()
        runs["eval"] = await self.evaluate()
        result = EvalResult.model_validate(runs["eval"].result)
        if not result.passed and not force:
            raise GateFailedError(gate_line(result) + "; stopped before export.")
        runs["export"] = await self.export(force)
        return FlywheelReport(runs=runs, route=self.route())

    # -- helpers --------------------------------------------------------------------------

    async def _stage(
        self,
        stage: Stage,
        parent: StageRun,
        section: Any,
        body: Callable[[str], Awaitable[BaseModel]],
    ) -> StageRun:
        raw = json.dumps(
            [parent.id, _plain(section)], sort_keys=True, ensure_ascii=False, default=str
        )
        run_id = f"{self.spec.name}-{stage}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"
        found = self.store.find_run(run_id)
        if found is not None and found.status == "done":
            return found
        self.store.start_run(run_id, self.spec.name, stage, parent.id)
        started = time.perf_counter()
        try:
            result = await body(run_id)
        except BaseException as e:
            message = e.message if isinstance(e, LLMForgeError) else repr(e)
            self.store.finish_run(
                run_id, "failed", time.perf_counter() - started, error=message[:2000]
            )
            raise
        self.store.finish_run(
            run_id, "done", time.perf_counter() - started, result.model_dump(mode="json")
        )
        return self.store.get_run(run_id)

    def _latest(self, stage: Stage) -> StageRun:
        for run in self.store.list_runs(self.spec.name, limit=1000):
            if run.stage == stage and run.status == "done":
                return run
        raise InvalidRequestError(
            f"Flywheel '{self.spec.name}' has no finished {stage} run; run "
            f"`llmforge distill {stage} FILE` first (or `llmforge distill run FILE`)."
        )

    def _labels_of(self, train_run: StageRun) -> LabelResult:
        return LabelResult.model_validate(self.store.get_run(train_run.parent or "").result)

    def _base_cache(self) -> Path:
        return Path(self.settings.distill.base_cache).expanduser()

    async def _score_gguf(
        self, path: Path, labels_folder: str, run_id: str
    ) -> tuple[float | None, float | None]:
        test: list[Example] = read_split(Path(labels_folder), "test")
        dataset, _ = test_dataset(test, run_id)
        export = self.spec.export
        config = gguf_config(
            f"{self.spec.student_name}-check", path, export.context_length, export.threads
        )
        model = chat_models.get("llamacpp")(config, self.catalog)
        sampling_spec = self.spec.eval
        sampling = Sampling(max_tokens=sampling_spec.max_tokens, temperature=0.0)
        try:
            with self.reporter.stage("check gguf") as step:
                run = await score_run(
                    dataset,
                    ChatTarget(f"{run_id}:gguf", model, sampling),
                    sampling_spec,
                    self.evals,
                    f"{run_id}-gguf",
                    lambda done, total: step(done, total, None),
                )
        finally:
            await model.aclose()
        return mean_of(run, sampling_spec.metric), latency_p50(self.evals, run.id)


def gate_line(result: EvalResult) -> str:
    s = "none" if result.student_score is None else f"{result.student_score:.3f}"
    t = "none" if result.teacher_score is None else f"{result.teacher_score:.3f}"
    return (
        f"gate failed: student {result.metric} {s} < {result.gate_share:g} x teacher {t}"
        if not result.passed
        else f"gate passed: student {s} >= {result.gate_share:g} x teacher {t}"
    )


def _version(
    out: ExportResult, lineage: Lineage, context_length: int, teacher: float | None
) -> ModelVersion:
    return ModelVersion(
        name=out.model,
        version=out.version,
        status="active" if out.status == "active" else "failed",
        path=out.path,
        sha256=out.sha256,
        quant=out.quant,
        context_length=context_length,
        lineage=lineage,
        scores={
            "merged": out.merged_score,
            "gguf": out.gguf_score,
            "quant_loss": out.quant_loss,
            "teacher": teacher,
        },
        error=out.error,
        created_at=time.time(),
    )


def _plain(section: Any) -> Any:
    if isinstance(section, BaseModel):
        return section.model_dump(mode="json")
    if isinstance(section, dict):
        return {k: _plain(v) for k, v in section.items()}
    return section


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
