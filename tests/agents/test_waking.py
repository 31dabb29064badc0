"""A task woken by what it waited for (a child's outcome, a signal, a timer) stores the merge
that woke it with its own first write: real agent processes, a real server, a real kill."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec

from relaybus.agents.journal import Journal, JournalStore
from relaybus.agents.submit import submit
from relaybus.bus import Bus
from relaybus.bus.kv import Bucket
from relaybus.bus.feed import EventFeed

from ..conftest import Spawn
from .test_durable import kill9, outcome


async def test_a_parent_woken_by_its_last_child_stores_the_outcome_with_its_end(
    bus: Bus, spawn: Spawn
) -> None:
    # Given a parent waiting for one child, and every write of its journal watched
    spawn("runtime_agents:FanOut")
    spawn("runtime_agents:Child")
    bucket = bus.subjects.bucket("journal")
    written: list[Journal] = []

    async def seen(msg: object) -> None:
        if msg.subject.endswith(".fanout") and msg.data:  # type: ignore[attr-defined]
            written.append(msgspec.msgpack.decode(msg.data, type=Journal))  # type: ignore[attr-defined]

    watcher = await bus.nc.subscribe(f"$KV.{bucket}.>", cb=seen)
    await bus.nc.flush()
    # When the child answers
    done = await submit(
        bus, "fanout", json.dumps({"items": [{"x": 4}]}).encode(), wait=True, timeout_s=60
    )
    assert done.status == "completed" and done.result == {"results": [8]}, done
    await asyncio.sleep(0.5)  # the last write's copy reaches this subscription
    await watcher.unsubscribe()
    # Then the write that stores its outcome is the parent's end: none wakes it on its own
    statuses = [(j.status, sorted(j.children)) for j in written]
    assert statuses[-1][0] == "completed" and len(statuses[-1][1]) == 1, statuses
    assert statuses[-2] == ("suspended", []), statuses
    assert len(written) == 3, statuses  # stored before its child, its wait, its end


async def test_a_parent_killed_after_waking_resumes_once_from_the_redelivered_outcome(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given a parent woken by its child's outcome, killed -9 before it wrote anything
    woke, effects = tmp_path / "woke", tmp_path / "effects"
    fast = {"RELAYBUS_ACK_WAIT_S": "1"}
    first = spawn("runtime_agents:WakesSlowly", **fast)
    spawn("runtime_agents:Child", **fast)
    run = await submit(
        bus, "wakes-slowly", json.dumps({"woke": str(woke), "effects": str(effects)}).encode()
    )
    for _ in range(300):  # bounded: 30 s
        if woke.exists():
            break
        await asyncio.sleep(0.1)
    assert woke.exists(), "the parent never woke"
    kill9(first)
    # Then its journal still waits: the outcome that woke it was not written on its own
    store = JournalStore(await Bucket.open(bus, bus.subjects.bucket("journal")), "wakes-slowly")
    found = await store.load(run.run_id, run.run_id)  # the root task's id is its run's
    assert found is not None and found[0].status == "suspended", found
    assert not found[0].children, found[0].children
    # When another replica starts
    spawn("runtime_agents:WakesSlowly", **fast)
    # Then the outcome's redelivery wakes it again: the run completes, the effect runs once,
    # the child ran once
    done = await outcome(bus, run.run_id, 60)
    assert done.status == "completed" and done.result == {"child": 42}, done
    assert effects.read_text().splitlines() == ["charged"]
    async with EventFeed(bus, run.run_id, replay=True) as feed:
        events = await feed.stored()
    shown = [(e.kind, e.sender) for e in events]
    assert len([e for e in events if e.kind == "returned"]) == 1, shown
    assert len([e for e in events if e.kind == "resumed"]) >= 1, shown
