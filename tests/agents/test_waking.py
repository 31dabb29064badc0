"""A task woken by what it waited for (a child's outcome, a signal, a timer) stores the merge
that woke it with its own first write: real agent processes, a real server, a real kill."""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from relaybus import Agent, Context
from relaybus.agents.control import cancel_run
from relaybus.agents.journal import Journal, JournalStore
from relaybus.agents.submit import RunOutcome, submit
from relaybus.agents.worker import Worker
from relaybus.bus import Bus, Envelope, RelayError
from relaybus.bus.feed import EventFeed
from relaybus.bus.kv import Bucket
from relaybus.testing import AgentEnvironment

from ..conftest import Spawn
from .test_durable import kill9, outcome


async def woken(bus: Bus, agent: str, task: dict[str, str], marker: Path) -> RunOutcome:
    """Submit `task` to `agent` and wait until its handler, woken, puts down `marker`."""
    run = await submit(bus, agent, json.dumps(task).encode())
    for _ in range(300):  # bounded: 30 s
        if marker.exists():
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"{agent} never woke")


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
    run = await woken(bus, "wakes-slowly", {"woke": str(woke), "effects": str(effects)}, woke)
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


class WaitsForGrandchild(Agent):
    """A child of the run's root: waits for a grandchild, then returns at once (pure)."""

    name = "middle"

    async def handle(self, ctx: Context, task: Any) -> Any:
        (found,) = await ctx.gather(ctx.spawn("leaf", task))
        return {"middle": found}


class Leaf(Agent):
    name = "leaf"

    async def handle(self, ctx: Context, task: Any) -> Any:
        return {"leaf": task}


class Root(Agent):
    name = "root"

    async def handle(self, ctx: Context, task: Any) -> Any:
        (found,) = await ctx.gather(ctx.spawn("middle", task))
        return found


async def test_a_task_woken_in_a_run_cancelled_while_it_waited_sends_nothing(
    tmp_path: Path,
) -> None:
    # Given a run's middle task waiting for its leaf, cancelled while no agent process is up
    # (none learns of it from the cancel message: only the run's record says it)
    async with AgentEnvironment([Root, WaitsForGrandchild]) as env:
        run = await env.client.submit("root", {"n": 1})
        for _ in range(100):  # bounded: 10 s, until the middle task waits for its leaf
            middle = [j for j in await env.journals(run.run_id) if j.agent == "middle"]
            if middle and middle[0].status == "suspended":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the middle task never suspended")
        await env.stop("middle")
        await env.stop("root")
        await run.cancel("changed my mind")
        # When the leaf answers and wakes the middle task, whose remainder ends at once
        await env.start(WaitsForGrandchild())
        await env.start(Root())
        await env.start(Leaf())
        for _ in range(100):  # bounded: 10 s
            (middle,) = [j for j in await env.journals(run.run_id) if j.agent == "middle"]
            if middle.status != "suspended":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        # Then it ends cancelled and sends nothing: the root, which still waits, gets no
        # outcome, and nothing says it resumed
        journals = {j.agent: j for j in await env.journals(run.run_id)}
        assert journals["middle"].status == "cancelled", journals["middle"]
        assert journals["middle"].children, "the leaf's outcome is stored with the end"
        assert journals["root"].status == "suspended" and not journals["root"].children
        async with EventFeed(env.client.bus, run.run_id, replay=True) as feed:
            events = await feed.stored()
        shown = [(e.kind, e.sender) for e in events]
        assert not [e for e in events if e.kind == "returned" and e.sender == "middle"], shown
        assert not [e for e in events if e.kind == "resumed" and e.sender == "middle"], shown
        assert (await run.record()).status == "cancelled"


async def test_parents_whose_children_answer_at_two_replicas_each_wake_once(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given two replicas of a parent agent, so its children's outcomes land at either one and
    # each replica's copy of a parent's journal goes stale under the other's merges
    log = tmp_path / "children"
    spawn("runtime_agents:FanOut", "--replicas", "2", "--concurrency", "8")
    spawn("runtime_agents:Child", "--replicas", "2", "--concurrency", "16")
    # When several runs fan out to eight children at once
    runs = 4
    items = [[{"x": 10 * r + x, "log": str(log)} for x in range(8)] for r in range(runs)]
    done = await asyncio.gather(
        *(
            submit(bus, "fanout", json.dumps({"items": i}).encode(), wait=True, timeout_s=90)
            for i in items
        )
    )
    # Then every run completes with every child's result, no child ran twice, and each ended
    # once (one end event each)
    for outcome_, its in zip(done, items, strict=True):
        assert outcome_.status == "completed", outcome_
        assert outcome_.result == {"results": [2 * item["x"] for item in its]}
    ran = sorted(map(int, log.read_text().split()))
    assert ran == sorted(item["x"] for its in items for item in its)
    for outcome_ in done:
        async with EventFeed(bus, outcome_.run_id, replay=True) as feed:
            events = await feed.stored()
        assert len([e for e in events if e.kind == "completed"]) == 1, events


async def test_a_woken_task_whose_journal_moved_before_its_first_write_wakes_again_at_once(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given a parent woken by its child's outcome, not written yet, with a long ack wait
    woke, go = tmp_path / "woke", tmp_path / "go"
    spawn("runtime_agents:WakesOnCue", RELAYBUS_ACK_WAIT_S="30")
    spawn("runtime_agents:Child")
    run = await woken(bus, "wakes-on-cue", {"woke": str(woke), "go": str(go)}, woke)
    # When its journal moves meanwhile (another replica's merge: here a signal written as one)
    store = JournalStore(await Bucket.open(bus, bus.subjects.bucket("journal")), "wakes-on-cue")
    await store.mutate(run.run_id, run.run_id, lambda j: j.signals.setdefault("note", b"1"))
    go.write_text("go")
    # Then its claim is lost and what woke it is merged again at once, not after the ack wait:
    # the run completes with the child's result and keeps the other write
    started = asyncio.get_running_loop().time()
    done = await outcome(bus, run.run_id, 60)
    assert done.status == "completed" and done.result == {"child": 10}, done
    assert asyncio.get_running_loop().time() - started < 15.0  # the ack wait is 30 s
    found = await store.load(run.run_id, run.run_id)
    assert found is not None and found[0].signals == {"note": b"1"}, found
    assert found[0].status == "completed" and len(found[0].children) == 1, found[0]


async def test_a_woken_task_taken_over_after_a_crash_in_a_cancelled_run_runs_no_further_step(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given a woken parent that ran one step and was killed -9, whose run was then cancelled
    # while no process of it was up (none learns of it from the cancel message)
    effects, hung = tmp_path / "effects", tmp_path / "hung"
    fast = {"RELAYBUS_ACK_WAIT_S": "1"}
    first = spawn("runtime_agents:StepsAfterWaking", **fast)
    spawn("runtime_agents:Child", **fast)
    run = await woken(bus, "steps-after-waking", {"effects": str(effects), "hung": str(hung)}, hung)
    kill9(first)
    await cancel_run(bus, run.run_id, "changed my mind")
    # When another replica takes over the outcome's redelivery
    spawn("runtime_agents:StepsAfterWaking", **fast)
    store = JournalStore(
        await Bucket.open(bus, bus.subjects.bucket("journal")), "steps-after-waking"
    )
    for _ in range(150):  # bounded: 15 s
        found = await store.load(run.run_id, run.run_id)
        if found is not None and found[0].status != "running":
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    # Then it stops there: its journal says cancelled and its second step never ran
    assert found is not None and found[0].status == "cancelled", found
    assert effects.read_text().splitlines() == ["first"]


class StepsAfterLeaf(Agent):
    name = "stepsafterleaf"

    async def handle(self, ctx: Context, task: Any) -> Any:
        (found,) = await ctx.gather(ctx.spawn("leaf", task))
        await ctx.step("effect", _append_effect, "once")
        return found


def _append_effect(line: str) -> str:
    assert EFFECTS is not None
    with EFFECTS.open("a") as f:
        f.write(line + "\n")
    return line


EFFECTS: Path | None = None


async def test_a_woken_task_whose_record_cannot_be_read_wakes_again_and_runs_its_step_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the run's record out of reach while the parent wakes (its read fails, twice: once
    # as it replays, once more at its first write)
    global EFFECTS
    EFFECTS = tmp_path / "effects"
    reads: collections.Counter[str] = collections.Counter()
    read = Worker.cancelled_before_start

    async def flaky(self: Worker, env: Envelope) -> bool:
        reads[env.recipient] += 1
        if env.recipient == "stepsafterleaf" and reads[env.recipient] in (2, 3):
            raise RelayError("the run's record is out of reach")
        return await read(self, env)

    monkeypatch.setattr(Worker, "cancelled_before_start", flaky)
    async with AgentEnvironment([StepsAfterLeaf, Leaf]) as env:
        # When the leaf's outcome wakes it
        run = await env.client.submit("stepsafterleaf", {"n": 7})
        result = await run.result(timeout_s=30)
        # Then it woke again (merged anew, in the same process), ran its step once and
        # completed
        assert result == {"leaf": {"n": 7}}
        assert EFFECTS.read_text().splitlines() == ["once"]
        # its first write's read, the two that failed, the one after waking again
        assert reads["stepsafterleaf"] == 4, reads
        # and no attempt of it failed: it was not retried, nothing was counted against the run
        async with EventFeed(env.client.bus, run.run_id, replay=True) as feed:
            events = await feed.stored()
        assert not [e for e in events if e.kind == "retried"], [e.kind for e in events]
