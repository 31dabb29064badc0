"""Outcomes merged into a waiting task's journal together (agents/merging.py), against a real
journal bucket: what arrives while a write is on its way goes out with the next one, each
outcome learns when its own change is stored, and nothing is lost when a write fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from relaybus.agents.journal import Journal, JournalStore, Outcome, Wait
from relaybus.agents.merging import Merged, Merges
from relaybus.agents.submit import submit
from relaybus.bus import Bus, RelayError
from relaybus.bus.kv import Bucket

from ..conftest import Spawn
from .test_durable import outcome

CHILDREN = [f"child-{i}" for i in range(9)]


async def _store(bus: Bus) -> JournalStore:
    return JournalStore(await Bucket.open(bus, bus.subjects.bucket("journal")), "parent")


async def _waiting(journals: JournalStore, run_id: str) -> tuple[Journal, int]:
    journal = Journal(
        run_id=run_id,
        task_id="task-1",
        agent="parent",
        task=b"{}",
        status="suspended",
        waiting=Wait(children=tuple(CHILDREN)),
    )
    return journal, await journals.create(journal)


def _answer(child: str) -> Callable[[Journal], None]:
    def merge(journal: Journal) -> None:
        journal.children.setdefault(child, Outcome(ok=True, result=child.encode()))

    return merge


async def test_outcomes_arriving_during_a_write_share_the_next_one(bus: Bus) -> None:
    # Given a task waiting for nine children, and one child's outcome being written
    journals = await _store(bus)
    merges = Merges(journals)
    found = await _waiting(journals, "run-1")
    first = merges.merge(
        "run-1", "task-1", _answer(CHILDREN[0]), owner="o0", driver="T:1", current=found
    )
    await asyncio.sleep(0)  # its write is on its way
    # When seven more arrive meanwhile
    rest = [
        merges.merge(
            "run-1", "task-1", _answer(child), owner=f"o{i}", driver=f"T:{i}", current=None
        )
        for i, child in enumerate(CHILDREN[1:8], start=1)
    ]
    merged = await asyncio.gather(first, *rest)
    # Then eight outcomes took at most two writes (one each before), all of them stored
    stored = await journals.load("run-1", "task-1")
    assert stored is not None
    journal, revision = stored
    assert revision - found[1] <= 2
    assert sorted(journal.children) == CHILDREN[:8]
    assert journal.status == "suspended" and not any(m.claimed for m in merged)
    # each learned the revision that holds its own change
    assert all(CHILDREN[i] in m.journal.children for i, m in enumerate(merged))
    assert all(m.revision <= revision for m in merged)
    # And the ninth, completing the wait, claims the task in its write
    last = await merges.merge(
        "run-1", "task-1", _answer(CHILDREN[8]), owner="o8", driver="T:8", current=None
    )
    assert last.claimed
    journal, _ = await journals.load("run-1", "task-1") or (None, 0)
    assert journal is not None
    assert (journal.status, journal.owner, journal.driver) == ("running", "o8", "T:8")
    assert merges._groups == {}


async def test_what_is_on_its_way_shows_ahead_until_it_is_stored(bus: Bus) -> None:
    journals = await _store(bus)
    merges = Merges(journals)
    found = await _waiting(journals, "run-2")
    on_its_way = merges.merge(
        "run-2", "task-1", _answer(CHILDREN[0]), owner="o", driver="T:1", current=found
    )
    assert merges.on_their_way("run-2", "task-1")
    copy = journals.recent("run-2", "task-1")
    assert copy is not None and CHILDREN[0] not in copy[0].children
    assert CHILDREN[0] in merges.ahead("run-2", "task-1", copy)[0].children
    await merges.stored("run-2", "task-1")
    assert on_its_way.done() and not merges.on_their_way("run-2", "task-1")


async def test_a_failed_write_fails_every_outcome_in_it_and_the_next_write_starts_afresh(
    bus: Bus,
) -> None:
    journals = await _store(bus)
    merges = Merges(journals)
    # Given outcomes for a journal that is not there (no write can hold them)
    lost = [
        merges.merge("run-3", "task-1", _answer(c), owner="o", driver="T:1", current=None)
        for c in CHILDREN[:3]
    ]
    # Then each of them fails, none is said stored, and nothing is left behind
    for merge in lost:
        with pytest.raises(RelayError, match="no journal"):
            await merge
    assert merges._groups == {}
    # And once the journal is there, the redeliveries merge them
    await _waiting(journals, "run-3")
    again = [
        merges.merge("run-3", "task-1", _answer(c), owner="o", driver="T:1", current=None)
        for c in CHILDREN[:3]
    ]
    await asyncio.gather(*again)
    stored = await journals.load("run-3", "task-1")
    assert stored is not None and sorted(stored[0].children) == CHILDREN[:3]


async def test_a_stale_copy_loses_nothing_written_meanwhile_elsewhere(bus: Bus) -> None:
    # Given this process's copy of the journal, and another process merging after it was read
    journals = await _store(bus)
    merges = Merges(journals)
    found = await _waiting(journals, "run-4")
    elsewhere = await _store(bus)
    await elsewhere.mutate("run-4", "task-1", _answer(CHILDREN[5]))
    # When outcomes merge here from the stale copy
    await asyncio.gather(
        merges.merge("run-4", "task-1", _answer(CHILDREN[0]), owner="o", driver="T", current=found),
        merges.merge("run-4", "task-1", _answer(CHILDREN[1]), owner="o", driver="T", current=None),
    )
    # Then the other process's merge is kept beside theirs
    stored = await journals.load("run-4", "task-1")
    assert stored is not None
    assert sorted(stored[0].children) == [CHILDREN[0], CHILDREN[1], CHILDREN[5]]


async def test_an_outcome_that_stops_waiting_leaves_the_write_to_the_others(bus: Bus) -> None:
    journals = await _store(bus)
    merges = Merges(journals)
    found = await _waiting(journals, "run-5")
    stopping = asyncio.ensure_future(
        merges.merge("run-5", "task-1", _answer(CHILDREN[0]), owner="o", driver="T", current=found)
    )
    staying = merges.merge(
        "run-5", "task-1", _answer(CHILDREN[1]), owner="o", driver="T", current=None
    )
    stopping.cancel()  # its handler is stopped (a drain)
    await staying
    stored = await journals.load("run-5", "task-1")
    assert stored is not None and sorted(stored[0].children) == CHILDREN[:2]


async def test_children_answering_at_once_share_their_parent_s_journal_writes(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    """Real processes: eight children held until all have started, then let go at once. Their
    outcomes share the parent's journal writes; each child ran once; the parent's result holds
    every child's answer. (One merge write per outcome before: eight children cost their parent
    ten writes.)"""
    spawn("runtime_agents:FanOut")
    spawn("runtime_agents:Child", "--concurrency", "16")
    journal = bus.subjects.bucket("journal")
    writes: list[str] = []

    async def seen(msg: object) -> None:
        writes.append(msg.subject)  # type: ignore[attr-defined]

    watcher = await bus.nc.subscribe(f"$KV.{journal}.>", cb=seen)
    await bus.nc.flush()
    children, log, go = 8, tmp_path / "children.log", tmp_path / "go"
    items = [{"x": i, "log": str(log), "go": str(go)} for i in range(children)]
    body = json.dumps({"items": items}).encode()
    started = await submit(bus, "fanout", body)
    for _ in range(300):  # bounded: 30 s for every child to start
        if log.exists() and len(log.read_text().split()) == children:
            break
        await asyncio.sleep(0.1)
    go.write_text("go")
    done = await outcome(bus, started.run_id)
    assert done.status == "completed"
    assert done.result == {"results": [2 * i for i in range(children)]}
    assert sorted(log.read_text().split(), key=int) == [str(i) for i in range(children)]
    await asyncio.sleep(0.5)  # the last writes' copies reach this subscription
    await watcher.unsubscribe()
    parent = [s for s in writes if s.endswith(".fanout") and done.run_id in s]
    # stored, its wait parked, the outcomes in a few shared writes, its end
    assert len(parent) <= children - 1, parent


async def test_an_outcome_too_large_to_store_fails_alone_not_its_whole_group(bus: Bus) -> None:
    # Given outcomes merged together, one of them too large for any journal write
    journals = await _store(bus)
    merges = Merges(journals)
    found = await _waiting(journals, "run-6")
    too_large = b"x" * (bus.nc.max_payload + 1)

    def oversized(journal: Journal) -> None:
        journal.children.setdefault(CHILDREN[1], Outcome(ok=True, result=too_large))

    together = [
        merges.merge("run-6", "task-1", _answer(CHILDREN[0]), owner="o", driver="T", current=found),
        merges.merge("run-6", "task-1", oversized, owner="o", driver="T", current=None),
        merges.merge("run-6", "task-1", _answer(CHILDREN[2]), owner="o", driver="T", current=None),
    ]
    results = await asyncio.gather(*together, return_exceptions=True)
    # Then only that one failed, for its size; the others are stored and told so
    assert [isinstance(r, Exception) for r in results] == [False, True, False]
    assert "payload" in f"{type(results[1]).__name__} {results[1]}".lower()
    assert not any(isinstance(r, Merged) and r.claimed for r in results)
    stored = await journals.load("run-6", "task-1")
    assert stored is not None and sorted(stored[0].children) == [CHILDREN[0], CHILDREN[2]]


async def test_a_writer_stopped_before_it_starts_fails_its_outcomes_and_leaves_nothing(
    bus: Bus,
) -> None:
    journals = await _store(bus)
    merges = Merges(journals)
    found = await _waiting(journals, "run-7")
    pending = merges.merge(
        "run-7", "task-1", _answer(CHILDREN[0]), owner="o", driver="T", current=found
    )
    for writer in merges._writers:
        writer.cancel()  # a teardown cancelling every task, before this one ever ran
    with pytest.raises(RelayError, match="stopped"):
        await asyncio.wait_for(pending, 5)
    await asyncio.wait_for(merges.stored("run-7", "task-1"), 5)
    assert merges._groups == {}
    # and the next merge writes afresh
    await merges.merge("run-7", "task-1", _answer(CHILDREN[0]), owner="o", driver="T", current=None)
    stored = await journals.load("run-7", "task-1")
    assert stored is not None and list(stored[0].children) == [CHILDREN[0]]


async def test_a_claim_stored_though_its_reply_was_lost_is_still_this_outcome_s(bus: Bus) -> None:
    # Given the write that completed the wait landed, claiming the task for this delivery's
    # owner, but its reply was lost (the outcome is written again, alone)
    journals = await _store(bus)
    merges = Merges(journals)
    await _waiting(journals, "run-8")
    for child in CHILDREN[:8]:
        await journals.mutate("run-8", "task-1", _answer(child))

    def landed(journal: Journal) -> None:
        _answer(CHILDREN[8])(journal)
        journal.status, journal.owner, journal.driver, journal.waiting = (
            "running",
            "o8",
            "T:8",
            None,
        )

    await journals.mutate("run-8", "task-1", landed)
    # When it is merged again by the same delivery
    again = await merges.merge(
        "run-8", "task-1", _answer(CHILDREN[8]), owner="o8", driver="T:8", current=None
    )
    # Then it is told it claimed the task, so it runs it (nobody else would)
    assert again.claimed
    # and another delivery merging the same outcome is not
    other = await merges.merge(
        "run-8", "task-1", _answer(CHILDREN[8]), owner="o9", driver="T:9", current=None
    )
    assert not other.claimed
