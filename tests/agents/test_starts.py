"""A task's `started` event is held while the task is quick: a quick task's end carries its
start (attempt, queue time) and publishes no `started`; a task that runs longer, or shows
anything else first, publishes its `started` ahead of everything else it shows, stamped with
the time it began."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from relaybus import Agent, Context
from relaybus.agents import runtree
from relaybus.agents.console.labels import RETRY, TAKEOVER, event_rows
from relaybus.agents.outcomes import Outcomes
from relaybus.agents.starts import STARTED_AFTER_S, HeldStarts
from relaybus.agents.submit import submit
from relaybus.agents.waiting import await_outcome
from relaybus.bus import Bus, Event, new_envelope
from relaybus.bus.feed import EventFeed
from relaybus.testing import AgentEnvironment

from ..conftest import Spawn


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
        # stored in order: the parent's start before anything of the child it created
        kinds = [(e.kind, e.envelope_id == run.run_id) for e in events]
        assert kinds.index(("started", True)) < kinds.index(("returned", False)), kinds


async def test_a_task_redelivered_after_a_crash_publishes_its_start_at_once(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given a first attempt killed -9 within the moment its start is held (nothing published)
    began = tmp_path / "began"
    first = spawn("runtime_agents:StuckFirst", RELAYBUS_ACK_WAIT_S="1")
    run = await submit(bus, "stuck-first", json.dumps({"began": str(began)}).encode())
    for _ in range(200):  # bounded: 20 s
        if began.exists():
            break
        await asyncio.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    # When another replica takes the redelivery, which is quick
    spawn("runtime_agents:StuckFirst", RELAYBUS_ACK_WAIT_S="1")
    outcome = await await_outcome(bus, run.run_id, 60)
    assert outcome.status == "completed" and outcome.result == 2, outcome
    # Then its start went out on its own, at once: a redelivery is what people diagnose
    async with EventFeed(bus, run.run_id, replay=True) as feed:
        events = await feed.stored()
    shown = [(e.kind, e.attempt) for e in events]
    assert [e.attempt for e in events if e.kind == "started"] == [2], shown
    assert [e.attempt for e in events if e.kind == "completed"] == [0], shown


def test_a_takeover_of_an_attempt_that_left_no_event_is_called_one() -> None:
    def ev(kind: str, **fields: Any) -> Event:
        return Event(run_id="r1", kind=kind, envelope_id="t1", **fields)

    retried = ev("resumed", time=2.0, attempt=2, detail=RETRY)  # its `retried` event was lost
    assert event_rows([ev("submitted", time=1.0), retried])[1]["detail"].startswith(RETRY)
    rows = event_rows(
        [ev("submitted", time=1.0), ev("resumed", time=2.0, attempt=2, detail=TAKEOVER)]
    )
    assert rows[1]["detail"].startswith(TAKEOVER), rows[1]


def test_a_quick_task_handed_off_by_a_child_is_sent_by_that_child_in_the_tree() -> None:
    def ev(kind: str, task: str, t: float, **fields: Any) -> Event:
        return Event(run_id="r1", kind=kind, envelope_id=task, time=t, **fields)

    events = [
        ev("submitted", "p", 1.0),
        ev("started", "p", 1.1, sender="user:u", recipient="p", attempt=1),
        ev("call", "p", 1.2, sender="p", recipient="c", child_id="c"),
        ev("started", "c", 1.3, sender="p", recipient="c", parent_id="p", attempt=1),
        ev("handoff", "c", 1.4, sender="c", recipient="d", child_id="d", parent_id="p"),
        # d answers its caller's caller, p: its `returned` names p, but c sent it the task
        ev("returned", "d", 1.5, sender="d", recipient="p", parent_id="p", attempt=1),
    ]
    tree = runtree.build("r1", events)
    (p,) = tree.roots
    (c,) = p.children
    (d,) = c.children
    assert (d.agent, d.sender, d.via) == ("d", "c", "handoff")


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


async def test_what_is_still_held_at_shutdown_goes_out() -> None:
    sent: list[Event] = []

    async def publish(event: Event) -> None:
        sent.append(event)

    starts = HeldStarts(publish, after_s=10)
    assert starts.hold(_started("t1")) and starts.hold(_started("t2"))
    await starts.aclose()
    assert sorted(e.envelope_id for e in sent) == ["t1", "t2"] and len(starts) == 0


class _RefusingBus:
    """Stands in for the connection during a failover: durable publishes fail."""

    def __init__(self, failure: BaseException | None = None) -> None:
        self.sent: list[Event] = []
        self.failure = failure or TimeoutError("no PubAck")

    async def publish_event(self, event: Event, *, durable: bool = False, once: str = "") -> None:
        if durable:
            raise self.failure
        self.sent.append(event)


async def test_an_end_that_cannot_be_published_lets_the_start_it_carried_go_out() -> None:
    bus = _RefusingBus()
    outcomes = Outcomes(bus, "quick", None, None)  # type: ignore[arg-type]
    env = new_envelope(kind="task", sender="user:u", recipient="quick", payload=b"{}")
    await outcomes.started(env, 1, 2.0)
    assert bus.sent == []  # held
    try:
        await outcomes.emit(env, "completed", once="end-1")
    except TimeoutError:
        pass
    else:
        raise AssertionError("the end's failure must reach the caller (it is resent)")
    assert [(e.kind, e.attempt) for e in bus.sent] == [("started", 1)]


async def test_a_start_whose_publish_fails_does_not_fail_its_task_and_is_not_kept() -> None:
    async def publish(event: Event) -> None:
        raise ConnectionError("closed")

    starts = HeldStarts(publish, after_s=10)
    assert starts.hold(_started())
    assert await starts.before("t1", "suspended") is None
    assert len(starts) == 0


async def test_an_end_cancelled_on_its_way_lets_the_start_it_carried_go_out() -> None:
    bus = _RefusingBus(asyncio.CancelledError())
    outcomes = Outcomes(bus, "quick", None, None)  # type: ignore[arg-type]
    env = new_envelope(kind="task", sender="user:u", recipient="quick", payload=b"{}")
    await outcomes.started(env, 1, 2.0)
    try:
        await outcomes.emit(env, "completed", once="end-1")
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the cancellation must reach the caller")
    await outcomes.starts.aclose()
    assert [(e.kind, e.attempt) for e in bus.sent] == [("started", 1)]
