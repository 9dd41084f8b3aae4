"""What the managed-engine tests (llama-server, vLLM) check about processes: whether one is gone,
whether a whole process group is, and that an engine dies with the LLMForge that started it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def group_gone(pgid: int) -> bool:
    """No live process is left in the process group `pgid` (the engine and what it started)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def assert_engine_dies_with_its_parent(script: str, *args: str, what: str, cwd: Path) -> None:
    """Run `script` (it starts an engine and prints the engine's pid), SIGKILL it (no atexit, no
    aclose) and check the engine exits within 10 s."""
    parent = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, cwd=cwd, text=True
    )
    try:
        assert parent.stdout is not None
        engine = int(parent.stdout.readline())
        assert not gone(engine)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not gone(engine) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(engine), f"{what} {engine} outlived the LLMForge that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
