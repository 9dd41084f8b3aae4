"""Batch work dispatched by address: in this process by default, or on a Ray cluster (a real one,
started here with `ray start --head` on 127.0.0.1, reached through Ray Client), where teacher
labelling gives the same labels, counts and costs as in this process."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmforge.core.db import open_engine
from llmforge.core.dispatch import InProcessExecutor, executors, open_executor
from llmforge.core.errors import ConfigError, UnknownNameError
from llmforge.core.types import Message
from llmforge.distill.collect import Example, Split
from llmforge.distill.config import LabelSpec
from llmforge.distill.label import LabelResult, label_examples
from llmforge.distill.store import DistillStore
from llmforge.models import ModelCatalog
from tests.distill.conftest import SYSTEM, rows, task_settings, write_task
from tests.fakes.server import free_port


async def test_the_default_executor_maps_in_this_process_in_order() -> None:
    executor = open_executor(None)
    assert isinstance(executor, InProcessExecutor) and executor.local
    running: list[int] = []
    peak = 0

    async def slow_square(x: int) -> int:
        nonlocal peak
        running.append(x)
        peak = max(peak, len(running))
        await asyncio.sleep(0.01 * (5 - x))  # later items finish first
        running.remove(x)
        return x * x

    assert await executor.map(slow_square, [1, 2, 3, 4]) == [1, 4, 9, 16]
    assert peak == 4  # all at once: the call site bounds concurrency
    await executor.aclose()


def test_an_unknown_executor_scheme_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as e:
        open_executor("dask://scheduler:8786")
    assert "local" in e.value.names and "ray" in e.value.names
    assert executors.get("ray").__name__ == "RayExecutor"
    assert open_executor("auto").address == "auto"  # a Ray on this machine; nothing reached yet


# -- on a local Ray cluster --------------------------------------------------------------------


def ray_bin() -> Path:
    if importlib.util.find_spec("ray") is None:
        reason = "Ray is not installed (pip install 'llmforge[cluster]'; `make test` does)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return Path(sys.executable).parent / "ray"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A Ray head on 127.0.0.1 in a process group of its own (stopped by that group's id, not by
    `ray stop`, which would stop every Ray on the machine); its Ray Client address."""
    binary = ray_bin()
    folder = Path(tempfile.mkdtemp(prefix="lfray-"))  # short: Ray's socket paths are bounded
    client_port = free_port()
    head = subprocess.Popen(
        [
            *(str(binary), "start", "--head", "--block", "--disable-usage-stats"),
            *("--node-ip-address", "127.0.0.1", "--port", str(free_port())),
            *("--ray-client-server-port", str(client_port), "--num-cpus", "2"),
            *("--include-dashboard", "false", "--temp-dir", str(folder)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert head.poll() is None, "ray start --head exited"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", client_port)) == 0:
                    break
            time.sleep(0.25)
        else:
            pytest.fail("the Ray head did not open its client port in 90 s")
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the raylet, GCS and workers are in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(folder, ignore_errors=True)


def task_splits() -> dict[Split, list[Example]]:
    examples = [
        Example(
            id=f"row-{i}",
            messages=[
                Message(role="system", content=SYSTEM),
                Message(role="user", content=row["text"]),
            ],
            reference=row["label"],
        )
        for i, row in enumerate(rows())
    ]
    return {"train": examples[::2], "val": examples[1::4], "test": examples[3::4]}


async def label(
    folder: Path,
    store: DistillStore,
    executor_address: str,
    catalog: ModelCatalog,
    spec: LabelSpec,
) -> tuple[dict[Split, list[Example]], LabelResult]:
    executor = open_executor(executor_address)
    try:
        return await label_examples(
            task_splits(),
            "task",
            "teacher",
            catalog.chat("teacher"),
            catalog.config("teacher"),
            spec,
            store,
            executor=executor,
        )
    finally:
        await executor.aclose()


async def test_labelling_on_a_ray_cluster_equals_labelling_in_process(
    ray_cluster: str, tmp_path: Path
) -> None:
    settings = task_settings(tmp_path, write_task(tmp_path))
    catalog = ModelCatalog.from_settings(settings)
    spec = LabelSpec(samples=2, concurrency=2)  # 36 prompts x 2 samples: three batches of 32
    here_store = DistillStore(open_engine(f"sqlite:///{tmp_path / 'here.db'}"))
    there_store = DistillStore(open_engine(f"sqlite:///{tmp_path / 'there.db'}"))
    try:
        here, here_result = await label(tmp_path, here_store, "local", catalog, spec)
        there, there_result = await label(tmp_path, there_store, ray_cluster, catalog, spec)
        assert there == here
        assert sum(here_result.counts.values()) == len(rows()) and here_result.dropped == 0
        assert there_result.calls == here_result.calls == 2 * len(rows())
        skip = {"latency_p50_ms"}  # measured where the calls ran
        assert there_result.model_dump(exclude=skip) == here_result.model_dump(exclude=skip)
        # what the cluster answered was cached here: labelling again calls the teacher no more
        again, again_result = await label(tmp_path, there_store, "local", catalog, spec)
        assert again == here and (again_result.calls, again_result.cached) == (0, 2 * len(rows()))

        # a batch that fails on the cluster fails the labelling with the worker's own error
        (tmp_path / "labels.jsonl").unlink()  # the workers build the teacher from its config
        fresh = DistillStore(open_engine(f"sqlite:///{tmp_path / 'fresh.db'}"))
        with pytest.raises(ConfigError, match="does not exist"):
            await label(tmp_path, fresh, ray_cluster, catalog, spec)
    finally:
        await catalog.aclose()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the cluster extra")
def test_a_ray_client_server_that_dies_starting_is_tried_again_other_failures_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from llmforge.core import dispatch

    failures = [
        RuntimeError(
            "Initialization failure from server: RuntimeError: Starting Ray client "
            "server failed. See ray_client_server_23000.err for detailed logs."
        )
    ]
    tries: list[str] = []

    def init(address: str, **_: object) -> None:
        tries.append(address)
        if failures:
            raise failures.pop()

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(dispatch.time, "sleep", lambda _s: None)
    executor = dispatch.RayExecutor("ray://127.0.0.1:10001")
    executor._connect()
    assert tries == ["ray://127.0.0.1:10001"] * 2 and executor._connected

    failures.append(ConnectionError("ray client connection timeout"))
    tries.clear()
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster"):
        dispatch.RayExecutor("ray://127.0.0.1:10001")._connect()
    assert len(tries) == 1
