"""A task's `started` event is held while the task is quick: a quick task's end carries its
start (attempt, queue time) and publishes no `started`; a task that runs longer, or shows
anything else first, publishes its `started` ahead of everything else it shows, stamped with
the time it began."""

from __future__ import annotations

import asyncio
from typing import Any

from relaybus import Agent, Context
from relaybus.agents import runtree
from relaybus.agents.starts import STARTED_AFTER_S, HeldStarts
from relaybus.bus import Event
from relaybus.bus.feed import EventFeed
from relaybus.testing import AgentEnvironment


class Quick(Agent):
    name = "quick"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.02)  # well within the moment a start is held
        return task


class Slow(Agent):
    name = "slow"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        await asyncio.sleep(STARTED_AFTER_S * 3)
        return "done"


class Stepper(Agent):
    name = "stepper"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> int:
        return int(await ctx.step("one", int, 1))


class Parent(Agent):
    name = "parent"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> list[Any]:
        return list(await ctx.gather(ctx.spawn("quick", {"n": 1})))


async def _events(env: AgentEnvironment, run_id: str) -> list[Event]:
    async with EventFeed(env.client.bus, run_id, replay=True) as feed:
        return await feed.stored()


async def test_a_quick_task_publishes_no_started_and_its_end_says_it_started() -> None:
    async with AgentEnvironment([Quick]) as env:
        run = await env.client.submit("quick", {"n": 1})
        assert await run.result(timeout_s=20) == {"n": 1}
        events = await _events(env, run.run_id)
        kinds = [e.kind for e in events]
        assert kinds == ["submitted", "completed"], kinds
        end = events[-1]
        assert end.attempt == 1 and end.queued_ms > 0 and end.envelope_id == run.run_id
        tree = runtree.build(run.run_id, events)
        (task,) = tree.roots
        assert task.agent == "quick" and task.attempts == 1 and task.status == "completed"
        assert task.queued_ms == end.queued_ms
        assert tree.started <= task.started <= task.ended
        assert task.as_json()["duration_ms"] >= 20  # from when it began, not when it ended


async def test_a_task_running_longer_publishes_started_while_it_runs_dated_when_it_began() -> None:
    async with AgentEnvironment([Slow]) as env:
        run = await env.client.submit("slow", {})
        async with EventFeed(env.client.bus, run.run_id, replay=True) as feed:
            first = None
            while (event := await feed.next(10)) is not None and event.kind != "completed":
                if event.kind == "started":
                    first = event
                    break
        assert first is not None, "no started event while the task ran"
        assert await run.result(timeout_s=20) == "done"
        events = await _events(env, run.run_id)
        assert [e.kind for e in events] == ["submitted", "started", "completed"]
        started, end = events[1], events[2]
        assert started.attempt == 1 and end.attempt == 0  # the start went out on its own
        assert end.time - started.time >= STARTED_AFTER_S * 2.5  # dated when it began


async def test_a_started_event_goes_out_before_anything_else_the_task_shows() -> None:
    async with AgentEnvironment([Stepper]) as env:
        run = await env.client.submit("stepper", {})
        assert await run.result(timeout_s=20) == 1
        kinds = [e.kind for e in await _events(env, run.run_id)]
        assert kinds == ["submitted", "started", "step", "completed"], kinds


async def test_a_quick_child_returns_saying_it_started_and_the_tree_knows_who_sent_it() -> None:
    async with AgentEnvironment([Parent, Quick]) as env:
        run = await env.client.submit("parent", {})
        assert await run.result(timeout_s=20) == [{"n": 1}]
        events = await _events(env, run.run_id)
        child_events = [e for e in events if e.envelope_id != run.run_id and e.envelope_id]
        assert [e.kind for e in child_events] == ["returned"], [e.kind for e in events]
        assert child_events[0].attempt == 1
        tree = runtree.build(run.run_id, events)
        (root,) = tree.roots
        (child,) = root.children
        assert child.agent == "quick" and child.sender == "parent" and child.via == "call"
        assert child.attempts == 1 and root.started <= child.started <= child.ended
        assert child.as_json()["duration_ms"] >= 20


# -- HeldStarts on its own: what goes out, when, and only once ---------------------------------


def _started(task: str = "t1") -> Event:
    return Event(run_id="r1", kind="started", envelope_id=task, attempt=2, latency_ms=3.5)


async def test_an_end_takes_the_held_start_and_nothing_is_published() -> None:
    sent: list[Event] = []

    async def publish(event: Event) -> None:
        sent.append(event)

    starts = HeldStarts(publish, after_s=0.05)
    assert starts.hold(_started())
    folded = await starts.before("t1", "completed")
    assert folded is not None and folded.attempt == 2 and folded.latency_ms == 3.5
    await asyncio.sleep(0.1)  # its timer was stopped
    starts.send("t1")  # and the attempt's end finds nothing left
    await asyncio.sleep(0)
    assert sent == [] and len(starts) == 0


async def test_a_held_start_goes_out_once_when_due_and_before_the_next_event() -> None:
    sent: list[Event] = []

    async def publish(event: Event) -> None:
        sent.append(event)

    starts = HeldStarts(publish, after_s=0.05)
    assert starts.hold(_started("t1")) and starts.hold(_started("t2"))
    assert not starts.hold(_started("t2"))  # a duplicate beside it: its caller publishes it
    assert await starts.before("t2", "step") is None  # goes out first
    assert [e.envelope_id for e in sent] == ["t2"]
    await asyncio.sleep(0.15)  # t1's timer
    assert [e.envelope_id for e in sent] == ["t2", "t1"]
    assert await starts.before("t1", "completed") is None  # already out: not folded again
    starts.send("t1")
    await asyncio.sleep(0.1)
    assert [e.envelope_id for e in sent] == ["t2", "t1"] and len(starts) == 0


async def test_a_start_whose_publish_fails_does_not_fail_its_task_and_is_not_kept() -> None:
    async def publish(event: Event) -> None:
        raise ConnectionError("closed")

    starts = HeldStarts(publish, after_s=10)
    assert starts.hold(_started())
    assert await starts.before("t1", "suspended") is None
    assert len(starts) == 0
