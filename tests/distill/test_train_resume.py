"""A training killed with SIGKILL resumes from its last whole checkpoint: the real command in a
child process, killed mid-run, then run again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmforge.core.db import open_engine
from llmforge.distill import DistillStore, Flywheel, catalog_for, load_flywheel
from llmforge.distill.train import latest_step
from tests.cli_process import llmforge
from tests.distill.conftest import SYSTEM, task_settings, write_task

pytestmark = pytest.mark.slow
STEPS = 8


def test_a_killed_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    labels = write_task(tmp_path)
    settings = task_settings(tmp_path, labels)
    (tmp_path / "llmforge.yaml").write_text(
        yaml.safe_dump(settings.model_dump(mode="json", exclude={"config_path"})),
        encoding="utf-8",
    )
    flywheel = {
        "name": "inj",
        "teacher": "teacher",
        "collect": {"source": "jsonl", "path": str(labels), "system": SYSTEM},
        "train": {"steps": STEPS, "batch_size": 1, "max_seq_len": 32, "checkpoint_every": 2},
    }
    (tmp_path / "flywheel.yaml").write_text(yaml.safe_dump(flywheel), encoding="utf-8")
    engine = open_engine(settings.database)

    async def prepare() -> None:
        catalog = catalog_for(settings, engine)
        fw = Flywheel(load_flywheel(tmp_path / "flywheel.yaml"), settings, engine, catalog)
        try:
            await fw.collect()
            await fw.label()
        finally:
            await catalog.aclose()

    asyncio.run(prepare())
    child = subprocess.Popen(
        [sys.executable, "-m", "llmforge", "distill", "train", "flywheel.yaml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    train_root = tmp_path / "distill" / "inj" / "train"
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and child.poll() is None:
        runs = list(train_root.glob("*")) if train_root.is_dir() else []
        killed_at = next((s for r in runs if (s := latest_step(r)) is not None), None)
        if killed_at is not None:
            os.kill(child.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    child.wait(timeout=30)
    assert killed_at is not None, "no checkpoint was written before the run ended"
    assert child.returncode == -signal.SIGKILL
    [run] = [r for r in DistillStore(engine).list_runs("inj") if r.stage == "train"]
    assert run.status == "running"  # killed: nothing marked it done

    again = llmforge("distill", "train", "flywheel.yaml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    [run] = [r for r in DistillStore(engine).list_runs("inj") if r.stage == "train"]
    assert run.status == "done"
    resumed = run.result["resumed_from"]
    assert resumed is not None and resumed >= killed_at
    assert f"resumed from step {resumed}" in " ".join(again.stdout.split())
    assert len(run.result["losses"]) == STEPS  # the losses before the kill were kept
    engine.dispose()
