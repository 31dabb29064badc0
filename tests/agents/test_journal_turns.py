"""A process's own bookkeeping around one journal (agents/journal.py): outcomes take turns at
it, and an outcome waits for a write its parent has on its way instead of re-reading."""

from __future__ import annotations

import asyncio

import pytest

from relaybus.agents.journal import JournalStore
from relaybus.bus import Bus
from relaybus.bus.kv import Bucket


async def _store(bus: Bus) -> JournalStore:
    return JournalStore(await Bucket.open(bus, bus.subjects.bucket("journal")), "parent")


async def test_turns_at_one_journal_never_overlap_and_leave_nothing_behind(bus: Bus) -> None:
    journals = await _store(bus)
    inside, most = 0, 0

    async def turn(i: int) -> None:
        nonlocal inside, most
        async with journals.one_at_a_time("run-1", "task-1"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1
            if i == 3:
                raise RuntimeError("a turn that fails")

    results = await asyncio.gather(*(turn(i) for i in range(8)), return_exceptions=True)
    assert most == 1
    assert [type(r).__name__ for r in results].count("RuntimeError") == 1
    async with journals.one_at_a_time("run-1", "task-2"):  # another journal: its own turns
        pass
    assert journals._turns == {}  # no lock kept for every journal ever touched


async def test_an_outcome_waits_for_the_write_on_its_way_and_only_for_that(bus: Bus) -> None:
    journals = await _store(bus)
    assert not await journals.written_here("run-1", "task-1", 5.0)  # none: no wait at all
    written = asyncio.Event()

    async def parent() -> None:
        async with journals.writing("run-1", "task-1"):
            async with journals.writing("run-1", "task-1"):  # a nested flush: one write
                await asyncio.sleep(0.2)
            written.set()

    writing = asyncio.create_task(parent())
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await journals.written_here("run-1", "task-1", 5.0)
    assert written.is_set() and loop.time() - started < 2.0
    await writing
    assert journals._on_its_way == {}


async def test_a_write_that_fails_still_releases_who_waits_for_it(bus: Bus) -> None:
    journals = await _store(bus)

    async def parent() -> None:
        async with journals.writing("run-1", "task-1"):
            await asyncio.sleep(0.1)
            raise RuntimeError("the write failed")

    failing = asyncio.create_task(parent())
    await asyncio.sleep(0.02)
    assert await journals.written_here("run-1", "task-1", 5.0)
    with pytest.raises(RuntimeError):
        await failing
    assert journals._on_its_way == {}


async def test_a_claim_on_its_way_and_a_flush_after_it_are_waited_for_together(bus: Bus) -> None:
    # Given a woken task's claim said to be on its way, then its flush publishing children
    journals = await _store(bus)
    claim_stored = journals.on_its_way("run-1", "task-1")
    flushed = asyncio.Event()

    async def woken_task() -> None:
        async with journals.writing("run-1", "task-1"):
            await asyncio.sleep(0.05)
            claim_stored()  # the flush's first write stores the claim
            claim_stored()  # said twice: once is what counts
            await asyncio.sleep(0.2)  # then the children go out, then the wait is parked
        flushed.set()

    running = asyncio.create_task(woken_task())
    await asyncio.sleep(0.01)
    # When a child's outcome comes back meanwhile
    assert await journals.written_here("run-1", "task-1", 5.0)
    # Then it waited for the flush's write, not only for the claim's
    assert flushed.is_set()
    await running
    assert journals._on_its_way == {}


async def test_a_write_on_its_way_too_long_is_waited_for_once_not_by_every_outcome(
    bus: Bus,
) -> None:
    # Given a woken task's claim on its way that takes long (its handler is slow to write)
    journals = await _store(bus)
    claim_stored = journals.on_its_way("run-1", "task-1")
    loop = asyncio.get_running_loop()
    # When outcomes, one after another, wait for it
    started = loop.time()
    assert await journals.written_here("run-1", "task-1", 0.3)  # waits, then gives up
    assert not await journals.written_here("run-1", "task-1", 0.3)  # no wait again
    assert not await journals.written_here("run-1", "task-1", 0.3)
    # Then only the first one waited
    assert loop.time() - started < 0.9
    claim_stored()  # the write that comes in the end leaves nothing behind
    assert journals._on_its_way == {}
