"""The line in front of a local model: a fixed number of slots (calls decoding at once), a bounded
first-come-first-served queue behind them, and what it looks like (`QueueStats`) for /metrics.

A call takes a slot for the whole of its answer and gives it back when it ends, fails or is
cancelled; a call that leaves while waiting drops out of the line without ever taking one. Slots are
handed to waiters strictly in arrival order, so a stream of short calls cannot starve a long one,
and with several slots a long generation holds only its own slot while the short ones pass it in
the others (llama-server interleaves the slots' tokens in one batch). One more call than
`slots + max_waiting` is refused at once with `OverloadedError` (503 with Retry-After) instead of
waiting without bound.

Not here: priorities, per-key fairness, or waiting across processes. Single event loop only (the
counters are not locked).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from llmforge.core.errors import OverloadedError

# upper bounds (seconds) of the waiting-time histogram's buckets
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of one local model's line: calls waiting, calls holding a slot, the slots, and
    the cumulative waiting-time histogram of every call that got a slot (counts per bucket of
    WAIT_BUCKETS, not cumulative; the last entry counts waits above the largest bound)."""

    waiting: int
    running: int
    slots: int
    wait_counts: tuple[int, ...]
    wait_sum_s: float
    refused: int


@runtime_checkable
class QueueReporter(Protocol):
    """A chat model with a local queue. Optional: /metrics shows its depth and waiting time."""

    def queue_stats(self) -> QueueStats: ...


class SlotQueue:
    """`slots` calls at once, up to `max_waiting` more in line (first come, first served)."""

    def __init__(self, name: str, slots: int, max_waiting: int) -> None:
        self.name = name
        self.slots = slots
        self.max_waiting = max_waiting
        self._running = 0
        self._line: deque[asyncio.Future[None]] = deque()
        self._wait_counts = [0] * (len(WAIT_BUCKETS) + 1)
        self._wait_sum = 0.0
        self._refused = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the `async with` (waiting in line for it first)."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    def stats(self) -> QueueStats:
        return QueueStats(
            waiting=len(self._line),
            running=self._running,
            slots=self.slots,
            wait_counts=tuple(self._wait_counts),
            wait_sum_s=self._wait_sum,
            refused=self._refused,
        )

    async def _acquire(self) -> None:
        if self._running < self.slots and not self._line:
            self._running += 1
            self._observe(0.0)
            return
        if len(self._line) >= self.max_waiting:
            self._refused += 1
            raise OverloadedError(
                f"model '{self.name}' is busy: {self._running} requests running and "
                f"{len(self._line)} waiting (max_queue {self.max_waiting}); retry shortly"
            )
        started = time.perf_counter()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        try:
            await turn  # resolved by _release, which has already counted this call as running
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot came with the cancellation: pass it on
            elif turn in self._line:
                self._line.remove(turn)
            raise
        self._observe(time.perf_counter() - started)

    def _release(self) -> None:
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot goes straight to the next in line
                return
        self._running -= 1

    def _observe(self, waited: float) -> None:
        index = next((i for i, bound in enumerate(WAIT_BUCKETS) if waited <= bound), -1)
        self._wait_counts[index] += 1
        self._wait_sum += waited
