"""The line in front of a local model (`local_queue.SlotQueue`): slots taken first come first
served, a bounded queue that refuses the excess, waiters that leave, and what /metrics reads."""

from __future__ import annotations

import asyncio

import pytest

from llmforge.core.errors import OverloadedError
from llmforge.models.local_queue import WAIT_BUCKETS, SlotQueue


async def test_slots_go_to_waiters_in_arrival_order() -> None:
    queue = SlotQueue("m", slots=2, max_waiting=10)
    order: list[int] = []
    release = asyncio.Event()

    async def call(i: int) -> None:
        async with queue.slot():
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(call(i)) for i in range(6)]
    await asyncio.sleep(0.01)
    assert order == [0, 1]  # two slots busy, four in line
    stats = queue.stats()
    assert (stats.running, stats.waiting, stats.slots) == (2, 4, 2)
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]
    assert queue.stats().running == 0


async def test_a_full_line_refuses_at_once_with_overloaded() -> None:
    queue = SlotQueue("m", slots=1, max_waiting=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with queue.slot():
            await release.wait()

    first, second = asyncio.create_task(hold()), asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    with pytest.raises(OverloadedError, match="'m' is busy") as refused:
        async with queue.slot():
            pass
    assert refused.value.http_status == 503 and queue.stats().refused == 1
    release.set()
    await asyncio.gather(first, second)


async def test_a_waiter_that_leaves_never_takes_a_slot() -> None:
    queue = SlotQueue("m", slots=1, max_waiting=5)
    release = asyncio.Event()
    ran: list[str] = []

    async def call(name: str) -> None:
        async with queue.slot():
            ran.append(name)
            await release.wait()

    holder = asyncio.create_task(call("holder"))
    leaver = asyncio.create_task(call("leaver"))
    stayer = asyncio.create_task(call("stayer"))
    await asyncio.sleep(0.01)
    leaver.cancel()
    await asyncio.sleep(0.01)
    assert queue.stats().waiting == 1
    release.set()
    await asyncio.gather(holder, stayer)
    assert ran == ["holder", "stayer"]
    assert queue.stats().running == 0 and queue.stats().waiting == 0


async def test_waiting_time_is_recorded_per_call() -> None:
    queue = SlotQueue("m", slots=1, max_waiting=5)

    async def call(hold_s: float) -> None:
        async with queue.slot():
            await asyncio.sleep(hold_s)

    await asyncio.gather(call(0.1), call(0.0))
    stats = queue.stats()
    assert sum(stats.wait_counts) == 2 and len(stats.wait_counts) == len(WAIT_BUCKETS) + 1
    assert stats.wait_counts[0] == 1  # the first went straight in
    assert 0.09 < stats.wait_sum_s < 1.0  # the second waited for the first
