"""A local model server process managed by LLMForge: started on a free 127.0.0.1 port, checked
healthy, restarted when it dies, and stopped with nothing left behind.

`ManagedProcess` owns one process, started from a command line built for the port it gets (and
an environment, when one is given), and a supervisor thread that starts it, waits until its health
path answers 200, then waits for it to exit: an exit it did not ask for is logged with the
process's last lines and the process is started again (after 0.2 s, doubling up to 30 s while
starts keep failing). Calls ask `await ready()` for the base URL of the running process, waiting
through a restart.

No orphans: the process leads its own process group (stopping signals the whole group: SIGTERM,
then SIGKILL after a grace period), on Linux it gets SIGKILL when the supervisor thread that
started it ends (PR_SET_PDEATHSIG, so even a SIGKILLed LLMForge leaves nothing running), and an
`atexit` hook stops it when the interpreter exits without `stop()`.

Not here: which program runs or what its command line says (`llama_server`, `vllm`), what is sent
to the server, several processes per model (each `deployments:` entry gets its own).
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
from collections.abc import Callable, Mapping, Sequence

from llmforge.core.errors import ConfigError, UpstreamError

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # SIGTERM -> SIGKILL
START_TIMEOUT_S = 300.0  # loading weights: a big model from a slow disk
RESTART_DELAY_S = 0.2
MAX_RESTART_DELAY_S = 30.0
HEALTH_POLL_S = 0.05
REPLACE_GRACE_S = 2.0
LOG_LINES = 40  # the process's last lines kept for error messages
PR_SET_PDEATHSIG = 1

Command = Callable[[int], Sequence[str]]  # the command line for a port


class ManagedProcess:
    """One supervised server process (see the module docstring). `name`: the model's (logs,
    errors); `label`: the program's, as users know it (`llama-server`, `vLLM`); `command`: the
    command line for a port; `env`: the process's whole environment (default: LLMForge's own);
    `detail`: what the start log line adds after the port."""

    def __init__(
        self,
        name: str,
        label: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        health_path: str = "/health",
        start_timeout_s: float = START_TIMEOUT_S,
        detail: str = "",
    ) -> None:
        self.name = name
        self.label = label
        self._command = command
        self._env = dict(env) if env is not None else None
        self._health_path = health_path
        self._start_timeout_s = start_timeout_s
        self._detail = detail
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
                raise UpstreamError(f"model '{self.name}': the engine is shutting down")
            if time.monotonic() >= deadline:
                raise UpstreamError(
                    f"model '{self.name}': {self.label} is not ready after {timeout_s:.0f} "
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
                target=self._supervise, name=f"{self.label}-{self.name}", daemon=True
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
                "model '%s': %s exited (%s); restarting in %.1f s. Last lines:\n%s",
                self.name,
                self.label,
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
        args = [str(a) for a in self._command(port)]
        try:
            proc = self._spawn(args)
        except OSError as e:
            self._failure = f"model '{self.name}': cannot start {args[0]}: {e}"
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
                "model '%s': %s pid %d on 127.0.0.1:%d%s",
                self.name,
                self.label,
                proc.pid,
                port,
                f" ({self._detail})" if self._detail else "",
            )
        code = proc.wait()
        self._url = None
        reader.join(1.0)
        if timed_out:
            why = f"did not become healthy within {self._start_timeout_s:.0f} s"
        else:
            why = f"exited with {_status(code)}"
        failure = f"model '{self.name}': {self.label} {why}"
        if not healthy:  # what it said before dying is why it could not start
            tail = " | ".join(line for line in self._lines if line.strip())[-600:]
            failure += f": {tail}" if tail else ""
        self._failure = failure
        return healthy

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_die_with_parent() if sys.platform == "linux" else None,
        )

    def _wait_healthy(self, proc: subprocess.Popen[bytes], port: int) -> tuple[bool, bool]:
        """(healthy, timed out)."""
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline and not self._stopping:
            if proc.poll() is not None:
                return False, False
            if _healthy(port, self._health_path):
                return True, False
            time.sleep(HEALTH_POLL_S)
        self._terminate()
        return False, not self._stopping

    def _read_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._lines.append(line)
            log.debug("%s %s: %s", self.label, self.name, line)

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


def _healthy(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
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
