"""Where batch work runs: in this process (the default) or on a cluster the operator already runs.

Batch work (teacher labelling today; ingest and eval runs can follow) is a map of one function over
batches. An `Executor` runs that map and hands back the results in the items' order:

    executor = open_executor(settings.executor)   # "local", "auto" or "ray://head:10001"
    try:
        answers = await executor.map(answer_batch, batches)
    finally:
        await executor.aclose()

Executors are named in the `executors` registry (entry point group `llmforge.executors`, so a
plugin may add, say, a queue its users already run); `open_executor` picks one by the address's
scheme. Built in:

- `local`: this process; the batches run concurrently on its event loop. Its `local` is True:
  the function may close over live objects (a loaded model) and the items need not travel.
- `ray`: a Ray cluster (the `cluster` extra, `pip install 'llmforge[cluster]'`): `ray://host:port`
  through Ray Client, or `auto` for the cluster `ray start` runs on this machine. Each item is one
  Ray task that runs the function with `asyncio.run`. The function must then be a module-level
  async function and the item picklable (a pydantic model): both travel to the workers, which need
  the same llmforge installed. Ray is imported only when such an executor is opened.

An executor does not retry, batch or cache: the call site decides the batches and keeps what
came back (a task that raises fails the whole map with that error).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from llmforge.core.errors import ConfigError, LLMForgeError
from llmforge.core.registry import Registry

T = TypeVar("T")
R = TypeVar("R")

LOCAL = "local"
CLIENT_SERVER_FAILED = "Starting Ray client server failed"  # Ray Client's per-client server
CLIENT_SERVER_TRIES = 3


class Executor(Protocol):
    """Runs `fn` over `items` somewhere; the results in the items' order."""

    @property
    def address(self) -> str: ...

    @property
    def local(self) -> bool:
        """Whether `fn` runs in this process (so it may close over live objects)."""
        ...

    async def map(self, fn: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]: ...

    async def aclose(self) -> None: ...


ExecutorFactory = Callable[[str], Executor]
executors: Registry[ExecutorFactory] = Registry("executor", "llmforge.executors")


def scheme_of(address: str) -> str:
    """The registry name an address picks: its URL scheme; `auto` is a Ray on this machine."""
    if "://" in address:
        return address.split("://", 1)[0]
    return "ray" if address == "auto" else address


def open_executor(address: str | None = None) -> Executor:
    """The executor for `address` (None or "local": this process). Opening connects to nothing:
    a cluster is reached on the first `map`."""
    address = address or LOCAL
    return executors.get(scheme_of(address))(address)


class InProcessExecutor:
    """The batches at once on this process's event loop."""

    local = True

    def __init__(self, address: str = LOCAL) -> None:
        self.address = address

    async def map(self, fn: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
        return list(await asyncio.gather(*(fn(item) for item in items)))

    async def aclose(self) -> None:
        return None


class RayExecutor:
    """One Ray task per item on the cluster at `address` (`ray://host:port` or `auto`)."""

    local = False

    def __init__(self, address: str) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(
                f"executor '{address}' needs Ray: pip install 'llmforge[cluster]' (Ray 2.60), "
                "or set `executor: local`."
            )
        self.address = address
        self._connected = False
        self._task: Any = None

    async def map(self, fn: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R]:
        if not items:
            return []
        await asyncio.to_thread(self._connect)
        import ray

        refs = [self._task.remote(fn, item) for item in items]
        try:
            return list(await asyncio.to_thread(ray.get, refs))
        except asyncio.CancelledError:
            for ref in refs:
                ray.cancel(ref)
            raise
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, BaseException) else None
            if isinstance(cause, LLMForgeError):
                raise cause from None
            raise LLMForgeError(
                f"A batch failed on the Ray cluster at {self.address}: {e.cause!r}"
            ) from None
        except ray.exceptions.RayError as e:
            raise LLMForgeError(
                f"The Ray cluster at {self.address} failed the work ({type(e).__name__}: {e}); "
                "check `ray status` there, or set `executor: local`."
            ) from None

    def _connect(self) -> None:
        if self._connected:
            return
        import ray

        for attempt in range(1, CLIENT_SERVER_TRIES + 1):
            try:
                ray.init(
                    address=self.address,
                    ignore_reinit_error=True,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
                break
            except (ConnectionError, RuntimeError, ValueError) as e:
                # the cluster answered, but the server it starts for this client died starting
                # (seen on a busy 2-core machine): a transient failure, tried again
                if CLIENT_SERVER_FAILED in str(e) and attempt < CLIENT_SERVER_TRIES:
                    ray.shutdown()
                    time.sleep(2.0 * attempt)
                    continue
                raise ConfigError(
                    f"executor: cannot reach the Ray cluster at '{self.address}' ({e}). Start "
                    "one (`ray start --head`) and give its address as ray://host:10001 (Ray "
                    "Client) or auto (a cluster on this machine)."
                ) from None
        self._task = ray.remote(_run)
        self._connected = True

    async def aclose(self) -> None:
        if self._connected:
            import ray

            await asyncio.to_thread(ray.shutdown)
            self._connected = False


def _run(fn: Callable[[T], Awaitable[R]], item: T) -> R:
    """A Ray task: one item through the async function, on the worker's own event loop."""
    return asyncio.run(fn(item))  # type: ignore[arg-type]


executors.register(LOCAL, InProcessExecutor)
executors.register("ray", RayExecutor)
