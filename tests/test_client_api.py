"""The client API (`relaybus.Client`) and `relaybus.testing`, used the way a user would."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import pydantic
import pytest

from relaybus import Agent, Client, Context, Interceptor, RelayError, RunFailed, tool
from relaybus.agents.journal import NOT_STORED, Journal, JournalStore
from relaybus.agents.submit import run_store
from relaybus.bus import decode, new_envelope
from relaybus.bus.envelope import from_message, to_message
from relaybus.bus.feed import EventFeed
from relaybus.bus.ids import new_id
from relaybus.bus.streams import read_subject
from relaybus.client import RunIdTaken, RunTimedOut
from relaybus.services.runs.state import ENDED, RUN_REVISION_HEADER, Finish, submitted_record
from relaybus.testing import AgentEnvironment

from .conftest import wait_for


class Echo(Agent):
    name = "echo"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return {"echo": task}


class Approver(Agent):
    name = "approver"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return {"approved": await ctx.wait_signal("approval"), "task": task}


EFFECTS = Path()  # set per test: one line per effect the Charger applied
GATE = asyncio.Event()  # the Charger's handler waits here, after its effect, until a test opens it


def apply_effect(order: str) -> str:
    with EFFECTS.open("a") as log:
        log.write(order + "\n")
    return f"charged {order}"


class Charger(Agent):
    name = "charger"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        ctx.log.info("charging order %s", task["order"])
        receipt = await ctx.step("charge", apply_effect, task["order"])
        await GATE.wait()
        ctx.log.info("charged order %s", task["order"])
        return {"receipt": receipt}


async def test_submit_and_wait_for_the_result() -> None:
    async with AgentEnvironment([Echo]) as env:
        run = await env.client.submit("echo", {"text": "hi"})
        assert await run.result(timeout_s=20) == {"echo": {"text": "hi"}}
        record = await run.record()
        assert record.status == "completed" and record.submitted_by == "user:tester"


async def test_a_run_id_makes_submission_idempotent() -> None:
    async with AgentEnvironment([Echo]) as env:
        first = await env.client.submit("echo", {"n": 1}, run_id="order-1842")
        again = await env.client.submit("echo", {"n": 1}, run_id="order-1842")
        assert first.run_id == again.run_id == "order-1842"
        assert await again.result(timeout_s=20) == {"echo": {"n": 1}}
        # after it ended, the same id still answers with the same run and starts nothing
        third = await env.client.submit("echo", {"n": 1}, run_id="order-1842")
        assert await third.result(timeout_s=5) == {"echo": {"n": 1}}
        async with EventFeed(env.client.bus, "order-1842", replay=True) as feed:
            events = await feed.stored()
        # one task, run once: its `started`, or (a quick task) its end saying it started
        attempts = [e for e in events if e.kind == "started" or (e.kind in ENDED and e.attempt)]
        assert len(attempts) == 1, [e.kind for e in events]

        with pytest.raises(RunIdTaken, match="already a run of 'echo'"):
            await env.client.submit("approver", {}, run_id="order-1842")
        async with Client(env.settings, user="mallory") as other:
            with pytest.raises(RunIdTaken, match="submitted by user:tester"):
                await other.submit("echo", {"n": 1}, run_id="order-1842")


async def test_signal_resumes_a_waiting_run_and_cancel_stops_one() -> None:
    async with AgentEnvironment([Approver]) as env:
        waiting = await env.client.submit("approver", {"amount": 5})
        with pytest.raises(RunTimedOut, match="keeps running"):
            await waiting.result(timeout_s=1.0)
        assert await waiting.signal("approval", {"by": "ops"}) in (True, False)
        assert await waiting.result(timeout_s=20) == {
            "approved": {"by": "ops"},
            "task": {"amount": 5},
        }

        stuck = await env.client.submit("approver", {"amount": 9})
        await asyncio.sleep(0.5)
        record = await stuck.cancel("not needed")
        assert record.status == "cancelled"
        with pytest.raises(RunFailed, match="not needed") as failed:
            await stuck.result(timeout_s=10)
        assert failed.value.info.type == "Cancelled"


async def test_waiting_clients_hold_no_consumer_on_the_events_stream() -> None:
    # nats-server caps a stream at 1,000 consumers: a consumer per waiting client would fail
    # the 1,001st, so waiting must not open one
    async with AgentEnvironment([Approver]) as env:
        bus = env.client.bus
        runs = [await env.client.submit("approver", {"amount": i}) for i in range(20)]
        waits = [asyncio.create_task(run.outcome(timeout_s=30)) for run in runs]
        await asyncio.sleep(1.0)
        events = await bus.js.stream_info(bus.subjects.stream("EVENTS"))
        assert events.state.consumer_count == 0
        for run in runs:
            await run.signal("approval", True)
        outcomes = await asyncio.gather(*waits)
        assert [o.status for o in outcomes] == ["completed"] * 20
        assert [o.result["task"]["amount"] for o in outcomes] == list(range(20))


async def test_a_run_ended_by_an_attempt_whose_end_event_was_lost_still_ends_once() -> None:
    # Given a run the authority already recorded as completed by an attempt that died before
    # its end event went out (or whose finish reply was lost and sent again)
    async with AgentEnvironment([]) as env:
        bus = env.client.bus
        run = await env.client.submit("echo", {"text": "hi"})
        tasks = bus.subjects.stream("TASKS")
        stored = await bus.js.get_last_msg(tasks, bus.subjects.task_admitted("echo"))
        task = from_message(stored.headers, stored.data or b"", bus.settings.max_payload_bytes)
        _, changed = await (await run_store(bus)).change(
            run.run_id,
            Finish(status="completed", result=msgspec.Raw(b'{"echo": {"text": "first"}}')),
            "echo",
        )
        assert changed

        async def end_events() -> list[bytes]:
            stored = await read_subject(
                bus, bus.subjects.stream("EVENTS"), bus.subjects.events_of(run.run_id)
            )
            return [data for _, data in stored if b'"kind":"completed"' in data]

        assert await end_events() == []
        # When its task is handled again (the redelivery; a pure handler runs again)
        await env.start(Echo())
        for _ in range(100):  # bounded: the handling takes well under a second
            if await end_events():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        # Then the run's end event is on the events stream, once, for every watcher to see,
        # with the outcome the record holds (the first attempt's), not the rerun's
        (event,) = await end_events()
        assert b'"first"' in event and b'"hi"' not in event, event
        assert await run.result(timeout_s=10) == {"echo": {"text": "first"}}
        # and when the same task is delivered once more (a duplicate), the stream still keeps one
        headers, body = to_message(task, bus.settings.max_payload_bytes)
        await bus.publish_bytes(bus.subjects.task_admitted("echo"), body, headers)
        for _ in range(50):  # bounded: until the duplicate was handled (acked)
            await asyncio.sleep(0.1)
            info = await bus.js.consumer_info(tasks, "agent_echo")
            if info.delivered.stream_seq >= 2 and not info.num_ack_pending:
                break
        else:
            raise AssertionError("the duplicate task was never handled")
        await asyncio.sleep(0.3)
        assert len(await end_events()) == 1


async def test_a_crashed_agent_replays_its_task_and_the_effect_runs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    global EFFECTS
    caplog.set_level(logging.INFO, logger="relaybus.agent.charger")
    EFFECTS = tmp_path / "effects"
    GATE.clear()
    async with AgentEnvironment([Charger], ack_wait_s=1.0) as env:
        run = await env.client.submit("charger", {"order": "A-7"})
        for _ in range(100):  # bounded: the step is journaled within a few seconds
            ops = await env.journal_ops(run.run_id, "charger")
            if ops:
                break
            await asyncio.sleep(0.1)
        assert [op.name for op in ops] == ["charge"]
        (before,) = await env.journals(run.run_id)
        await env.crash("charger")  # kill -9 mid-task: the task comes back after ack_wait
        GATE.set()
        assert await run.result(timeout_s=30) == {"receipt": "charged A-7"}
        (after,) = await env.journals(run.run_id)
        assert after.owner != before.owner  # a fresh replica took the task over and replayed it
    assert EFFECTS.read_text().splitlines() == ["A-7"]  # replayed from the journal, not re-run
    lines = [r.getMessage() for r in caplog.records if r.name == "relaybus.agent.charger"]
    assert sum("charging order A-7" in line for line in lines) == 1, lines  # quiet on replay
    assert sum("charged order A-7" in line for line in lines) == 1, lines


async def test_a_run_cancelled_before_its_task_started_runs_no_effect_and_stays_cancelled(
    tmp_path: Path,
) -> None:
    # Given two runs cancelled while their agents were down (their processes never saw the
    # cancels): one whose handler has an effect, one whose handler has none
    global EFFECTS
    EFFECTS = tmp_path / "effects"
    GATE.set()
    async with AgentEnvironment([], ack_wait_s=1.0) as env:
        charged = await env.client.submit("charger", {"order": "C-1"})
        echoed = await env.client.submit("echo", {"text": "late"})
        await charged.cancel("changed my mind")
        await echoed.cancel("changed my mind")
        # When the agents start and take the tasks
        await env.start(Charger())
        await env.start(Echo())
        bus = env.client.bus
        for _ in range(100):  # bounded: 10 s
            infos = [
                await bus.js.consumer_info(bus.subjects.stream("TASKS"), f"agent_{name}")
                for name in ("charger", "echo")
            ]
            if all(i.delivered.stream_seq and not i.num_ack_pending for i in infos):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the tasks were never handled")
        await asyncio.sleep(0.3)
        # Then the effect never ran, both runs stay cancelled and neither ends a second time
        assert not EFFECTS.exists(), EFFECTS.read_text()
        for run in (charged, echoed):
            record = await run.record()
            assert record.status == "cancelled", record
            stored = await read_subject(
                bus, bus.subjects.stream("EVENTS"), bus.subjects.events_of(run.run_id)
            )
            assert not [d for _, d in stored if b'"kind":"completed"' in d], stored
        (journal,) = await env.journals(charged.run_id)
        assert journal.status == "cancelled" and not journal.ops, journal


async def test_a_run_whose_record_changed_after_its_submit_ends_without_losing_the_change() -> None:
    # Given runs whose task carries the record's revision as submitted (the worker ends the run
    # from it without reading the record), one of them with a forged, wrong revision
    async with AgentEnvironment([]) as env:
        bus = env.client.bus
        changed = await env.client.submit("echo", {"text": "a"})
        # the record changes before the task starts: a signal kept until the run asks
        assert await changed.signal("late-answer", {"ok": True}) is False
        forged = new_envelope(
            kind="task", sender="user:tester", recipient="echo", payload=b'{"text": "b"}'
        )
        await (await run_store(bus)).create(
            submitted_record(forged.run_id, "echo", "user:tester", forged.created_at)
        )
        headers, body = to_message(forged)
        await bus.publish_bytes(
            bus.subjects.task_admitted("echo"), body, {**headers, RUN_REVISION_HEADER: "1"}
        )
        # When the agent runs both
        await env.start(Echo())
        assert await changed.result(timeout_s=20) == {"echo": {"text": "a"}}
        assert await env.client.run(forged.run_id).result(timeout_s=20) == {"echo": {"text": "b"}}
        # Then the changed record kept its change, and both ended once, completed
        record = await changed.record()
        assert record.status == "completed" and "late-answer" in record.signals, record
        assert (await env.client.run(forged.run_id).record()).status == "completed"


class Add(pydantic.BaseModel):
    a: int
    b: int


@tool("math/add")
async def add(args: Add) -> int:
    return args.a + args.b


class Audited(Interceptor):
    """What a user hangs around the runtime: it sees each handler run and each tool call, and
    can refuse a call before the tool runs."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def run_task(self, ctx: Context, headers: dict[str, str], call_next: Any) -> str:
        self.seen.append(f"task {ctx.agent} attempt {ctx.attempt}")
        outcome: str = await call_next()
        self.seen.append(f"task ended {outcome}")
        return outcome

    async def run_tool(self, ctx: Context, tool: Any, args: Any, call_next: Any) -> Any:
        if args.a < 0:
            raise RelayError(f"{tool.name}: negative numbers are not allowed here")
        self.seen.append(f"tool {tool.name} {args.a}+{args.b}")
        return await call_next()


AUDITED = Audited()


class Calculator(Agent):
    name = "calculator"
    interceptors = [AUDITED]

    async def handle(self, ctx: Context, task: dict[str, int]) -> int:
        first = await ctx.tool(add, a=task["a"], b=1)
        return int(await ctx.tool(add, a=first, b=task["b"]))


async def test_an_interceptor_wraps_each_handler_run_and_tool_call_and_can_refuse() -> None:
    AUDITED.seen.clear()
    async with AgentEnvironment([Calculator]) as env:
        run = await env.client.submit("calculator", {"a": 2, "b": 3})
        assert await run.result(timeout_s=20) == 6
        # the run's end is published from inside the handler run, before the wrapper returns
        await wait_for(lambda: len(AUDITED.seen) == 4, 10, "the interceptor to see the end")
        assert AUDITED.seen == [
            "task calculator attempt 1",
            "tool add 2+1",
            "tool add 3+3",
            "task ended completed",
        ]
        refused = await env.client.submit("calculator", {"a": -5, "b": 3})
        with pytest.raises(RunFailed, match="negative numbers are not allowed"):
            await refused.result(timeout_s=20)


class Fan(Agent):
    name = "fan"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> list[Any]:
        handles = [ctx.spawn("echo", {"i": i}) for i in range(task["children"])]
        return await ctx.gather(*handles, quorum=task.get("quorum"))


async def test_gather_over_no_children_is_empty_and_a_bad_quorum_fails_at_once() -> None:
    async with AgentEnvironment([Fan, Echo]) as env:
        # a fan-out over nothing waits for nothing, as asyncio.gather does
        run = await env.client.submit("fan", {"children": 0})
        assert await run.result(timeout_s=20) == []
        run = await env.client.submit("fan", {"children": 2})
        assert await run.result(timeout_s=20) == [{"echo": {"i": 0}}, {"echo": {"i": 1}}]
        # a quorum no fan-out can meet is the handler's mistake: it fails once, not retried
        run = await env.client.submit("fan", {"children": 1, "quorum": 3})
        with pytest.raises(RunFailed, match="quorum 3 is not between 1 and 1"):
            await run.result(timeout_s=20)
        record = await run.record()
    assert record.failures == 1, record


class Quick(Agent):
    name = "quick"

    async def handle(self, ctx: Context, task: Any) -> Any:
        return task


class SlowStart(Agent):
    """Spawns one child as its first operation (the journal is stored by that flush)."""

    name = "slowstart"

    async def handle(self, ctx: Context, task: Any) -> Any:
        (echoed,) = await ctx.gather(ctx.spawn("quick", task))
        return {"child": echoed}


async def test_a_child_that_answers_before_its_parent_s_journal_is_stored_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a parent whose journal's first write (after its child went out) is slow
    write = JournalStore.write

    async def late_first_write(self: JournalStore, journal: Journal, revision: int) -> int:
        if self.agent == "slowstart" and revision == NOT_STORED:
            await asyncio.sleep(1.2)  # the child ran and answered meanwhile
        return await write(self, journal, revision)

    monkeypatch.setattr(JournalStore, "write", late_first_write)
    async with AgentEnvironment([SlowStart, Quick], ack_wait_s=5.0) as env:
        run = await env.client.submit("slowstart", {"x": 1})
        # Then the child's early answer was read again once the journal was there
        assert await run.result(timeout_s=30) == {"child": {"x": 1}}


class MarkThenWait(Agent):
    name = "slowchild"

    async def handle(self, ctx: Context, task: Any) -> Any:
        await ctx.step("mark", lambda: 1)  # its journal is stored
        await asyncio.sleep(1.5)
        return "real"


class WaitsForChild(Agent):
    name = "waitparent"

    async def handle(self, ctx: Context, task: Any) -> Any:
        (result,) = await ctx.gather(ctx.spawn("slowchild", task))
        return result


async def test_a_copy_of_a_running_child_over_a_limit_cannot_fail_it() -> None:
    async with AgentEnvironment([WaitsForChild, MarkThenWait]) as env:
        run = await env.client.submit("waitparent", {"x": 1})
        journals: list[Any] = []
        for _ in range(100):  # bounded: the child's step is journaled within seconds
            journals = [j for j in await env.journals(run.run_id) if j.agent == "slowchild"]
            if journals and journals[0].ops:
                break
            await asyncio.sleep(0.05)
        # When a copy of the running child's task arrives past the duplicate window, its
        # deadline passed (a first delivery over a limit)
        bus = env.client.bus
        copy = msgspec.structs.replace(decode(journals[0].task), deadline=time.time() - 60)
        headers, body = to_message(copy)
        await bus.publish_bytes(
            bus.subjects.task_from("slowchild", "waitparent"),
            body,
            {**headers, "Nats-Msg-Id": new_id()},
        )
        # Then it changes nothing: the child's own result ends the run
        assert await run.result(timeout_s=30) == "real"


class PureChild(Agent):
    name = "purechild"

    async def handle(self, ctx: Context, task: Any) -> Any:
        return {"child": task}


class ChargesAfterChild(Agent):
    name = "afterchild"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> Any:
        (result,) = await ctx.gather(ctx.spawn("purechild", task))
        return await ctx.step("charge", apply_effect, task["order"]), result


async def test_a_child_that_answers_a_cancelled_run_wakes_no_parent(tmp_path: Path) -> None:
    # Given a parent suspended on its child, whose run is cancelled while neither agent's
    # process is up (so neither learns of it from the cancel message)
    global EFFECTS
    EFFECTS = tmp_path / "effects"
    async with AgentEnvironment([ChargesAfterChild]) as env:
        run = await env.client.submit("afterchild", {"order": "P-1"})
        for _ in range(100):  # bounded: the parent suspends within seconds
            parents = [j for j in await env.journals(run.run_id) if j.agent == "afterchild"]
            if parents and parents[0].status == "suspended":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the parent never suspended")
        await env.stop("afterchild")
        await run.cancel("changed my mind")
        # When both start again and the child (pure, unaware) answers
        await env.start(ChargesAfterChild())
        await env.start(PureChild())
        for _ in range(100):  # bounded: 10 s, until the parent's journal settles
            (parent,) = [j for j in await env.journals(run.run_id) if j.agent == "afterchild"]
            if parent.status != "suspended":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        (parent,) = [j for j in await env.journals(run.run_id) if j.agent == "afterchild"]
        # Then the parent did not resume into its effect: the run stays cancelled
        assert not EFFECTS.exists(), EFFECTS.read_text()
        assert parent.status == "cancelled", parent
        assert (await run.record()).status == "cancelled"


async def test_a_value_no_run_can_carry_is_refused_before_anything_is_sent() -> None:
    from relaybus import SubmissionInvalid

    bad = [
        ({"deadline_s": float("nan")}, "deadline_s"),
        ({"deadline_s": float("inf")}, "deadline_s"),
        ({"deadline_s": -1}, "deadline_s"),
        ({"deadline_s": "5"}, "deadline_s"),
        ({"max_hops": 2.5}, "max_hops"),
        ({"max_hops": 0}, "max_hops"),
        ({"max_steps": 10**30}, "max_steps"),
        ({"budget": "100"}, "budget"),
    ]
    async with AgentEnvironment([Echo]) as env:
        runs = await run_store(env.client.bus)
        for i, (options, field) in enumerate(bad):
            # When a run is submitted with a limit its envelope cannot carry (these used to be
            # stored, then dead-lettered as undecodable, and the caller saw only a timeout)
            with pytest.raises(SubmissionInvalid) as refused:
                await env.client.submit("echo", {"n": i}, run_id=f"bad-{i}", **options)
            # Then the error names the field, and no run was created
            assert refused.value.field == field, (options, refused.value)
            assert "nothing was submitted" in str(refused.value)
            assert await runs.get(f"bad-{i}") is None
        # A payload holding NaN is refused too, not sent as null
        with pytest.raises(SubmissionInvalid, match="payload must be JSON"):
            await env.client.submit("echo", {"x": [1.0, float("nan")]}, run_id="bad-nan")
        assert await runs.get("bad-nan") is None
        # and the next good submission runs as ever
        # a user the ingress would refuse (a subject wildcard) is refused by the client too
        for user in ("a.b*", "user:>", "x" * 65):
            with pytest.raises(SubmissionInvalid) as refused:
                Client(env.client.settings, user=user)
            assert refused.value.field == "user"
        run = await env.client.submit("echo", {"x": 1.5}, deadline_s=30, max_hops=3)
        assert await run.result(timeout_s=20) == {"echo": {"x": 1.5}}
