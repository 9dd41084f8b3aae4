"""Tool `python`: run a Python script in a subprocess with limits, no network and a scratch folder.

Each call is a fresh `python -I` process (isolated mode: no user site, no environment-driven
imports) in its own session, working in the run's scratch folder (`agents.sandbox.scratch/<run>`,
kept between the calls of a run so files can be passed along), with:

- **CPU time** `cpu_s` (RLIMIT_CPU: the kernel stops a busy loop), **memory** `memory_mb`
  (RLIMIT_AS: allocation fails with MemoryError), files up to 64 MB (RLIMIT_FSIZE);
- **wall time** `wall_s`: a sleeping or blocked script is killed with its whole process group;
- **no network**, two layers: a network namespace of its own when the kernel allows one
  (`unshare(CLONE_NEWNET)`, root or user namespaces: only a loopback that is down), and always a
  Python audit hook installed before the script runs that refuses socket creation, starting
  processes (subprocess, os.system, exec, fork) and loading C libraries through ctypes (which
  could undo it). An audit hook cannot be removed from inside the process;
- a small environment (no proxies, no keys), HOME at the scratch folder; output (stdout +
  stderr) kept up to `max_output_chars`, the rest read and dropped.

This is a guard against an agent's mistakes and runaway code, not a boundary against a hostile
user with a kernel exploit: for that, run the server itself in a container or VM. It does not
install packages; the script gets the interpreter's standard library (and what the server's
environment has installed, read-only in spirit).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from llmforge.agents.tools import FunctionTool, ToolContext, ToolEnv, ToolResult
from llmforge.core.config import SandboxConfig

CLONE_NEWNET = 0x40000000
FILE_LIMIT = 64 * 1024 * 1024

# Runs first in the child: refuse the network, new processes and ctypes, then run the script
# (read from stdin) as __main__.
BOOTSTRAP = r"""
import sys
_BLOCKED = ("socket.", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
            "os.fork", "os.forkpty", "pty.spawn", "ctypes.", "_ctypes.", "os.add_dll_directory")
def _guard(event, args):
    if event.startswith(_BLOCKED) and not event == "socket.gethostname":
        what = "network access" if event.startswith("socket.") else event
        raise PermissionError(f"sandbox: {what} is not allowed here")
source = sys.stdin.read()
sys.addaudithook(_guard)
del _guard
import __main__
code = compile(source, "<script>", "exec")
exec(code, __main__.__dict__)
"""


class SandboxRun(BaseModel):
    """How a script ended."""

    exit_code: int | None
    output: str
    killed: str | None = Field(None, description="why it was stopped: cpu, wall, or None")
    truncated: bool = False


class Sandbox:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config

    def folder(self, run_id: str) -> Path:
        path = Path(self.config.scratch).expanduser() / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()

    async def run(self, code: str, folder: Path) -> SandboxRun:
        cfg = self.config
        env = {
            "PATH": os.defpath,
            "HOME": str(folder),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-c",
            BOOTSTRAP,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=folder,
            env=env,
            preexec_fn=lambda: _limit(cfg),
        )
        assert proc.stdin is not None and proc.stdout is not None
        kept: list[bytes] = []
        size = 0
        dropped = False

        async def read() -> None:
            nonlocal size, dropped
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                room = cfg.max_output_chars * 4 - size
                if room > 0:
                    kept.append(chunk[:room])
                    size += min(len(chunk), room)
                if len(chunk) > room:
                    dropped = True

        killed: str | None = None
        try:
            proc.stdin.write(code.encode())
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await proc.stdin.drain()
            proc.stdin.close()
            try:
                await asyncio.wait_for(asyncio.gather(read(), proc.wait()), cfg.wall_s)
            except TimeoutError:
                killed = "wall"
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid)
                await proc.wait()
        code_ = proc.returncode
        if killed is None and code_ in (-signal.SIGXCPU, -signal.SIGKILL):
            killed = "cpu"
        text = b"".join(kept).decode("utf-8", "replace")
        if len(text) > cfg.max_output_chars:
            text, dropped = text[: cfg.max_output_chars], True
        return SandboxRun(
            exit_code=code_,
            output=text,
            killed=killed,
            truncated=dropped,
        )


def _limit(cfg: SandboxConfig) -> None:
    """In the child, before exec: its own session (so the group can be killed), the limits, and
    a network namespace of its own when the kernel allows it (else the audit hook alone)."""
    os.setsid()
    cpu = max(1, round(cfg.cpu_s))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = cfg.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)  # EPERM: stays in the host's


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def describe(run: SandboxRun, config: SandboxConfig) -> ToolResult:
    """The run as the model reads it."""
    if run.killed == "wall":
        note = f"killed: the script ran past the wall-time limit of {config.wall_s:g} s"
    elif run.killed == "cpu":
        note = f"killed: the script used up its CPU-time limit of {config.cpu_s:g} s"
    else:
        note = f"exit code {run.exit_code}"
    text = f"[{note}]\n{run.output}" + ("\n[output truncated]" if run.truncated else "")
    return ToolResult(text=text, is_error=run.killed is not None or run.exit_code != 0)


def create(env: ToolEnv) -> FunctionTool:
    sandbox = Sandbox(env.settings.agents.sandbox)

    async def python(
        code: Annotated[str, Field(description="a complete Python script; print() the results")],
        context: ToolContext,
    ) -> ToolResult:
        """Run a Python script (standard library only, no network, limited CPU time and
        memory) in a scratch folder kept for this run; returns what it printed."""
        run = await sandbox.run(code, sandbox.folder(context.run_id))
        return describe(run, sandbox.config)

    return FunctionTool(python, idempotent=False)
