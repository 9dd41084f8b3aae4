"""`llmforge serve` as a real process for the scale tests and the soak bench: started with a config
file on a free port, waited for, its worker processes found, stopped (or killed) and restarted.

It knows nothing of what the gateway serves; the caller writes the config.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    def __init__(
        self, config: dict[str, Any], folder: Path, workers: int = 1, port: int | None = None
    ) -> None:
        self.folder = folder
        self.workers = workers
        self.port = port or free_port()
        self.config_file = folder / "llmforge.yaml"
        self.config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_file = folder / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> GatewayProcess:
        command = [sys.executable, "-m", "llmforge", "serve", "--config", str(self.config_file)]
        command += ["--port", str(self.port), "--workers", str(self.workers)]
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, env=os.environ
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"the gateway did not answer in {timeout_s}s:\n{self.log()}")
        if self.workers > 1:
            self.wait_idle(deadline - time.monotonic())
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]

    def worker_pids(self) -> list[int]:
        """The processes serving requests: the workers under uvicorn's supervisor, or the one."""
        if self.proc is None:
            return []
        if self.workers == 1:
            return [self.proc.pid]
        return [
            pid
            for pid in _children(self.proc.pid)
            if "resource_tracker" not in _cmdline(pid)  # multiprocessing's helper
        ]

    def cpu_seconds(self) -> dict[int, float]:
        return {pid: _cpu_seconds(pid) for pid in self.worker_pids()}

    def wait_idle(self, timeout_s: float) -> None:
        """Until every worker is up and done starting (its CPU time stops growing)."""
        deadline = time.monotonic() + max(timeout_s, 1)
        before: dict[int, float] = {}
        while time.monotonic() < deadline:
            now = self.cpu_seconds()
            if (
                len(now) == self.workers
                and now.keys() == before.keys()
                and all(now[p] - before[p] < 0.02 for p in now)
            ):
                return
            before = now
            time.sleep(0.5)
        raise RuntimeError(f"the workers did not settle:\n{self.log()}")

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM and wait: workers finish their requests and write their traces."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the server and its workers at once: a crash, nothing flushed."""
        if self.proc is None:
            return
        for pid in [*self.worker_pids(), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _cpu_seconds(pid: int) -> float:
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(list((Path("/proc") / str(pid) / "fd").iterdir()))
