"""A llama-server process managed by LLMForge: found, started on a free 127.0.0.1 port, checked
healthy, restarted when it dies, and stopped with nothing left behind.

`LlamaServer` owns one process (one GGUF, `parallel` slots of `context_length` tokens each,
`threads` CPU threads) and a supervisor thread that starts it, waits for `/health`, then waits for
it to exit: an exit it did not ask for is logged with the process's last lines and the process is
started again (after 0.2 s, doubling up to 30 s while starts keep failing). Calls ask
`await ready()` for the base URL of the running process, waiting through a restart.

No orphans: the process leads its own process group (stopping signals the whole group: SIGTERM,
then SIGKILL after a grace period), on Linux it gets SIGKILL when the supervisor thread that
started it ends (PR_SET_PDEATHSIG, so even a SIGKILLed LLMForge leaves nothing running), and an
`atexit` hook stops it when the interpreter exits without `stop()`.

`binary(config)` finds the executable (the configured `llama_server`, else the one the Makefile
builds under ~/.cache/llmforge/llama.cpp-VERSION/bin for the installed llama-cpp-python VERSION).

Not here: what is sent to the server or read from it (`llama_served.py`), several processes per
model (each `deployments:` entry is its own model and gets its own process), GPUs.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import ctypes
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from llmforge.core.config import ModelConfig
from llmforge.core.errors import ConfigError, UpstreamError

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # SIGTERM -> SIGKILL
START_TIMEOUT_S = 300.0  # loading weights: a big GGUF from a slow disk
RESTART_DELAY_S = 0.2
MAX_RESTART_DELAY_S = 30.0
HEALTH_POLL_S = 0.05
REPLACE_GRACE_S = 2.0
LOG_LINES = 40  # the process's last lines kept for error messages
CACHE_RAM_MIB = 1024  # host memory for prompts of idle slots (llama-server's own default: 8192)
PR_SET_PDEATHSIG = 1


def binary(config: ModelConfig) -> Path | None:
    """The llama-server executable for `config`, or None when there is none (then the model runs
    in-process). A configured `llama_server` that does not exist is a ConfigError."""
    if config.llama_server:
        path = Path(config.llama_server).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(
                f"model '{config.name}': llama_server '{config.llama_server}' is not an "
                "executable file; build it with `make llama-tools` or fix the path"
            )
        return path
    path = default_binary()
    return path if path.is_file() and os.access(path, os.X_OK) else None


def default_binary() -> Path:
    """Where `make llama-tools` puts llama-server for the installed llama-cpp-python."""
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return Path.home() / ".cache" / "llmforge" / f"llama.cpp-{version}" / "bin" / "llama-server"


@dataclass(frozen=True)
class ServerSpec:
    """What a process is started with."""

    name: str  # the model's name (logs, errors)
    binary: Path
    model: Path
    parallel: int
    context: int  # tokens per slot
    threads: int


class LlamaServer:
    """One supervised llama-server process (see the module docstring)."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._wake = threading.Event()  # stop() wakes a supervisor sleeping between restarts
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None  # set while a healthy process runs
        self._failure: str | None = None  # why the last start failed (cleared when one succeeds)
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.starts = 0  # processes started (1 + restarts)
        self.starts_ok = 0  # processes that became healthy

    # -- asyncio side ---------------------------------------------------------------------------

    async def ready(self, timeout_s: float, *, replacing: str | None = None) -> str:
        """The base URL of the running process, starting it on first use and waiting (at most
        `timeout_s`) through a start or restart. `replacing`: a URL a call just failed on; a
        process that died there is being replaced, so its URL is not handed out again for up to
        REPLACE_GRACE_S (time for the supervisor to see the exit). A start that failed before any
        process became healthy raises ConfigError; waiting longer than `timeout_s` raises
        UpstreamError."""
        self.start()
        now = time.monotonic()
        deadline, grace = now + timeout_s, now + REPLACE_GRACE_S
        while True:
            url, failure = self._url, self._failure
            if url is not None and (url != replacing or time.monotonic() >= grace):
                return url
            if failure is not None and self.starts_ok == 0:
                raise ConfigError(failure)
            if self._stopping:
                raise UpstreamError(f"model '{self.spec.name}': the engine is shutting down")
            if time.monotonic() >= deadline:
                raise UpstreamError(
                    f"model '{self.spec.name}': llama-server is not ready after {timeout_s:.0f} "
                    f"s{'; ' + failure if failure else ''}"
                )
            await asyncio.sleep(HEALTH_POLL_S)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.stop)

    # -- supervision ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The healthy process's id (None while none is: starting, restarting, stopped)."""
        proc = self._proc
        return proc.pid if proc is not None and self._url is not None else None

    def start(self) -> None:
        """Start supervising (idempotent; returns at once)."""
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(
                target=self._supervise, name=f"llama-server-{self.spec.name}", daemon=True
            )
            self._thread.start()
            atexit.register(self.stop)

    def stop(self) -> None:
        """Stop the process (its whole group) and the supervisor; blocks up to STOP_GRACE_S."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        self._terminate()
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_GRACE_S + 1)
        atexit.unregister(self.stop)

    def _supervise(self) -> None:
        delay = RESTART_DELAY_S
        while not self._stopping:
            began = time.monotonic()
            healthy = self._run_once()
            if self._stopping:
                break
            if healthy and time.monotonic() - began > MAX_RESTART_DELAY_S:
                delay = RESTART_DELAY_S  # it ran well for a while: restart promptly
            log.warning(
                "model '%s': llama-server exited (%s); restarting in %.1f s. Last lines:\n%s",
                self.spec.name,
                self._failure,
                delay,
                "\n".join(self._lines),
            )
            self._wake.wait(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_S)

    def _run_once(self) -> bool:
        """Start one process, wait until it is healthy, then until it exits. Whether it became
        healthy; `_failure` says how it ended."""
        port = _free_port()
        self._lines.clear()
        try:
            proc = self._spawn(port)
        except OSError as e:
            self._failure = f"model '{self.spec.name}': cannot start {self.spec.binary}: {e}"
            return False
        self._proc = proc
        self.starts += 1
        reader = threading.Thread(target=self._read_output, args=(proc,), daemon=True)
        reader.start()
        healthy, timed_out = self._wait_healthy(proc, port)
        if healthy:
            self._failure = None
            self.starts_ok += 1
            self._url = f"http://127.0.0.1:{port}"
            log.info(
                "model '%s': llama-server pid %d on 127.0.0.1:%d (%d slots x %d tokens, "
                "%d threads)",
                self.spec.name,
                proc.pid,
                port,
                self.spec.parallel,
                self.spec.context,
                self.spec.threads,
            )
        code = proc.wait()
        self._url = None
        reader.join(1.0)
        if timed_out:
            why = f"did not become healthy within {START_TIMEOUT_S:.0f} s"
        else:
            why = f"exited with {_status(code)}"
        failure = f"model '{self.spec.name}': llama-server {why}"
        if not healthy:  # what it said before dying is why it could not start
            tail = " | ".join(line for line in self._lines if line.strip())[-600:]
            failure += f": {tail}" if tail else ""
        self._failure = failure
        return healthy

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        s = self.spec
        args = [
            str(s.binary),
            "--model", str(s.model),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--parallel", str(s.parallel),
            "--ctx-size", str(s.context * s.parallel),  # each slot gets `context` tokens
            "--threads", str(s.threads),
            "--threads-batch", str(s.threads),
            "--cont-batching",
            "--no-kv-unified",
            "--cache-ram", str(CACHE_RAM_MIB),
            "--no-webui",
            "--log-verbosity", "2",  # warnings and errors
        ]  # fmt: skip
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_die_with_parent() if sys.platform == "linux" else None,
        )

    def _wait_healthy(self, proc: subprocess.Popen[bytes], port: int) -> tuple[bool, bool]:
        """(healthy, timed out)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not self._stopping:
            if proc.poll() is not None:
                return False, False
            if _healthy(port):
                return True, False
            time.sleep(HEALTH_POLL_S)
        self._terminate()
        return False, not self._stopping

    def _read_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._lines.append(line)
            log.debug("llama-server %s: %s", self.spec.name, line)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # the process leads its group (start_new_session)


def _die_with_parent() -> Callable[[], None]:
    """A preexec function asking Linux to SIGKILL the child when the thread that started it
    ends (the supervisor thread: it lives as long as LLMForge supervises the process)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, called after

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
