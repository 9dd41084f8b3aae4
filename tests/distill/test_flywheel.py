"""The whole flywheel on a few dozen rows, with the real parts: traffic through a live gateway,
traces collected by tag, labels from a scripted teacher, two LoRA steps of the real SmolLM2,
the eval gate, a GGUF exported, quantized and loaded by llama.cpp, then a gateway routing the
teacher's traffic to it, escalating, rolling back, and still serving it after a failed export."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llmforge.core.db import open_engine
from llmforge.core.errors import ModelError
from llmforge.core.settings import Settings
from llmforge.distill import DistillStore, Flywheel, FlywheelReport, catalog_for
from llmforge.distill.config import FlywheelSpec
from llmforge.distill.student import file_sha256
from llmforge.gateway import create_app
from llmforge.traces import TraceStore
from tests.distill.conftest import SYSTEM, TINY_TRAIN, rows, task_settings, write_task
from tests.fakes.server import serve

pytestmark = pytest.mark.slow
MASTER = "sk-master-test"
AUTH = {"Authorization": f"Bearer {MASTER}"}


@dataclass
class Done:
    folder: Path
    settings: Settings
    spec: FlywheelSpec
    report: FlywheelReport
    store: DistillStore


def spec(**overrides: object) -> FlywheelSpec:
    data: dict[str, object] = {
        "name": "inj",
        "teacher": "teacher",
        "collect": {"source": "traces", "model": "teacher", "metadata": {"task": "injection"}},
        "train": TINY_TRAIN,
        "eval": {"gate_share": 0.0, "max_tokens": 4},
        "export": {"quant": "q8_0", "max_quant_loss": 1.0, "context_length": 512},
        "route": {"share": 0.0},
    }
    data.update(overrides)
    return FlywheelSpec.model_validate(data)


def chat(base: str, text: str, metadata: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, object] = {
        "model": "teacher",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        "max_tokens": 4,
    }
    if metadata:
        body["metadata"] = metadata
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=120)


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Done]:
    folder = tmp_path_factory.mktemp("flywheel")
    settings = task_settings(folder, write_task(folder), master_key=MASTER)
    with serve(create_app(settings)) as base:  # the task's traffic, traced
        for row in rows():
            assert chat(base, row["text"], {"task": "injection"}).status_code == 200
        for text in ("Hello there", "Tell me a joke"):
            assert chat(base, text, {"task": "other"}).status_code == 200
    engine = open_engine(settings.database)

    async def go() -> FlywheelReport:
        catalog = catalog_for(settings, engine)
        try:
            return await Flywheel(spec(), settings, engine, catalog).run()
        finally:
            await catalog.aclose()

    report = asyncio.run(go())
    yield Done(folder, settings, spec(), report, DistillStore(engine))
    engine.dispose()


def test_collect_reads_the_tagged_traces_of_the_live_server(done: Done) -> None:
    traced = TraceStore(done.store.engine).list(limit=100, model="teacher")
    assert len(traced) == len(rows()) + 2
    counts = done.report.runs["collect"].result["counts"]
    assert sum(counts.values()) == len(rows())  # the `task: other` calls are left out
    assert counts["train"] and counts["test"]


def test_labels_are_paid_once_at_the_teachers_price(done: Done) -> None:
    result = done.report.runs["label"].result
    assert result["calls"] == len(rows()) and result["dropped"] == 0
    assert result["cost_usd"] > 0 and result["cost_per_1k_usd"] > 0

    async def again() -> dict[str, object]:
        catalog = catalog_for(done.settings, done.store.engine)
        fw = Flywheel(spec(label={"concurrency": 2}), done.settings, done.store.engine, catalog)
        try:
            return (await fw.label()).result
        finally:
            await catalog.aclose()

    relabelled = asyncio.run(again())
    assert relabelled["calls"] == 0 and relabelled["cached"] == len(rows())


def test_training_checkpoints_and_reports_a_loss_curve(done: Done) -> None:
    result = done.report.runs["train"].result
    assert result["steps"] == 2 and len(result["losses"]) == 2
    folder = Path(result["adapter"]).parent
    assert (folder / "loss.svg").read_text().startswith("<svg")
    assert (folder / "checkpoints" / "latest").read_text() == "step-000001"


def test_the_gate_compares_student_and_teacher_on_the_test_split(done: Done) -> None:
    result = done.report.runs["eval"].result
    # traces carry no gold label: the teacher's labels are the reference, so it scores 1
    assert result["reference"] == "teacher" and result["teacher_score"] == 1.0
    assert 0.0 <= result["student_score"] <= 1.0
    assert result["passed"]  # gate_share 0 in this test: two steps teach little
    assert result["cases"] == done.report.runs["collect"].result["counts"]["test"]


def test_the_exported_gguf_is_registered_with_its_lineage(done: Done) -> None:
    [version] = done.store.versions("inj-student")
    assert version.status == "active" and version.quant == "q8_0"
    assert version.path is not None and version.path.endswith(".gguf")
    assert file_sha256(Path(version.path)) == version.sha256 == version.lineage.file_sha256
    runs = done.report.runs
    assert version.lineage.dataset == runs["collect"].result["sha256"]
    assert (version.lineage.label_run, version.lineage.train_run) == (
        runs["label"].id,
        runs["train"].id,
    )
    assert (version.lineage.eval_run, version.lineage.export_run) == (
        runs["eval"].id,
        runs["export"].id,
    )
    exported = runs["export"].result
    assert exported["merged_score"] == runs["eval"].result["student_score"]
    assert exported["gguf_score"] is not None and exported["quant_loss"] is not None


def test_the_gateway_routes_to_the_student_escalates_and_rolls_back(done: Done) -> None:
    text = rows()[0]["text"]
    with serve(create_app(done.settings)) as base:
        models = httpx.get(f"{base}/v1/models", headers=AUTH).json()["data"]
        assert "inj-student" in {m["id"] for m in models}  # served by name
        api = f"{base}/v1/distill/routes/teacher"
        route = {"student": "inj-student", "share": 1.0, "min_logprob": -100.0}
        assert httpx.put(api, json=route, headers=AUTH).status_code == 200
        answer = chat(base, text)
        assert answer.status_code == 200
        assert answer.headers["x-llmforge-served-by"] == "inj-student"

        route["min_logprob"] = 0.0  # never sure enough: every answer goes to the teacher
        assert httpx.put(api, json=route, headers=AUTH).status_code == 200
        answer = chat(base, text)
        assert "x-llmforge-served-by" not in answer.headers
        assert answer.json()["choices"][0]["message"]["content"] == "injection"
        feedback = httpx.get(f"{api}/feedback", headers=AUTH).json()["data"]
        assert [f["kind"] for f in feedback] == ["escalation"]
        assert feedback[0]["reason"] == "low_confidence"
        assert feedback[0]["teacher_answer"] == "injection"

        rolled = httpx.post(f"{api}/rollback", json={}, headers=AUTH).json()
        assert (rolled["share"], rolled["state"]) == (0.0, "rolled_back")
        assert "x-llmforge-served-by" not in chat(base, text).headers
        assert httpx.get(f"{base}/v1/distill/models").status_code == 401  # master key only
    served = [t.metadata or {} for t in TraceStore(done.store.engine).list(limit=3)]
    assert [m.get("distill.served") for m in reversed(served)] == ["student", "escalated", None]


def test_a_failed_export_leaves_the_previous_version_serving(done: Done, tmp_path: Path) -> None:
    broken = tmp_path / "converter"
    (broken / "gguf-py").mkdir(parents=True)
    (broken / "convert_hf_to_gguf.py").write_text("import sys\nsys.exit('disk full')\n")
    settings = done.settings.model_copy(
        update={"distill": done.settings.distill.model_copy(update={"converter_dir": str(broken)})}
    )
    engine = done.store.engine

    async def export() -> None:
        catalog = catalog_for(settings, engine)
        fw = Flywheel(spec(export={"quant": "q4_k_m"}), settings, engine, catalog)
        try:
            await fw.export()
        finally:
            await catalog.aclose()

    with pytest.raises(ModelError, match="disk full"):
        asyncio.run(export())
    versions = {v.version: v for v in done.store.versions("inj-student")}
    assert versions[2].status == "failed" and "disk full" in (versions[2].error or "")
    active = done.store.active("inj-student")
    assert active is not None and active.version == 1
    with serve(create_app(done.settings)) as base:
        body = {
            "model": "inj-student",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        }
        answer = httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
        assert answer.status_code == 200
