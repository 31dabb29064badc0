"""Durable execution with real agent processes, real kills and a real server."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from relaybus.agents.control import cancel_run, send_signal
from relaybus.agents.journal import Journal, JournalStore, Outcome, driver_of, drives
from relaybus.agents.submit import RunOutcome, has_consumer, run_store, submit, wait_for_run
from relaybus.bus import Bus, Event, default_topology, ensure
from relaybus.bus.cli import read_dead_letters, replay_dead_letter
from relaybus.bus.feed import EventFeed
from relaybus.bus.kv import Bucket

from ..conftest import ROOT, Spawn, child_env, consuming
from ..faults.conftest import describe_run

FAST = {"RELAYBUS_ACK_WAIT_S": "2"}


async def start_run(bus: Bus, agent: str, payload: object, **kw: object) -> str:
    outcome = await submit(bus, agent, json.dumps(payload).encode(), **kw)  # type: ignore[arg-type]
    return outcome.run_id


async def wait_event(
    bus: Bus, run_id: str, kind: str, agent: str | None = None, timeout_s: float = 30
) -> Event:
    async with EventFeed(bus, run_id, replay=True) as feed:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (event := await feed.next(deadline - loop.time())) is not None:
            if event.kind == kind and (agent is None or agent in (event.sender, event.recipient)):
                return event
    raise AssertionError(f"no {kind} event for run {run_id} within {timeout_s}s")


async def outcome(bus: Bus, run_id: str, timeout_s: float = 60) -> RunOutcome:
    async with EventFeed(bus, run_id, replay=True) as feed:
        return await wait_for_run(feed, run_id, timeout_s)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


async def test_kill9_between_effect_and_ack_runs_the_effect_once(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given two effector replicas and a sink; the first attempt stalls right after its effect
    effects, sink = tmp_path / "effects", tmp_path / "sink"
    first = spawn("runtime_agents:Effector", **FAST)
    spawn("runtime_agents:Sink", **FAST)
    run_id = await start_run(bus, "effector", {"effects": str(effects), "sink": str(sink)})
    await wait_event(bus, run_id, "step")  # the effect ran and its result is journaled
    # When the worker holding the message is killed -9 before acking
    kill9(first)
    spawn("runtime_agents:Effector", **FAST)
    done = await outcome(bus, run_id)
    # Then after redelivery the effect ran exactly once and exactly one handoff reached the sink
    assert done.status == "completed", done
    assert done.result == {"sink_runs": 1}
    assert len(effects.read_text().splitlines()) == 1
    assert sink.read_text().splitlines() == ["sink"]


async def test_kill9_orchestrator_while_waiting_another_replica_merges(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    log = tmp_path / "children"
    orchestrator = spawn("runtime_agents:FanOut", **FAST)
    spawn("runtime_agents:Child", "--concurrency", "3", **FAST)
    items = [{"x": x, "log": str(log), "sleep_s": 1.5} for x in (1, 2, 3)]
    run_id = await start_run(bus, "fanout", {"items": items})
    await wait_event(bus, run_id, "suspended", agent="fanout")
    kill9(orchestrator)  # it waits for 3 children; its message is already acked
    spawn("runtime_agents:FanOut", **FAST)
    done = await outcome(bus, run_id)
    assert done.status == "completed", done
    assert done.result == {"results": [2, 4, 6]}
    assert sorted(log.read_text().split()) == ["1", "2", "3"]  # no child ran twice


async def test_fan_out_20_children_over_3_worker_replicas(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    log = tmp_path / "children"
    spawn("runtime_agents:FanOut")
    spawn("runtime_agents:Child", "--replicas", "3", "--concurrency", "4")
    items = [{"x": x, "log": str(log)} for x in range(20)]
    done = await submit(
        bus, "fanout", json.dumps({"items": items}).encode(), wait=True, timeout_s=60
    )
    assert done.status == "completed", done
    assert done.result == {"results": [2 * x for x in range(20)]}
    assert sorted(map(int, log.read_text().split())) == list(range(20))


async def test_quorum_two_of_three_returns_without_the_straggler(bus: Bus, spawn: Spawn) -> None:
    spawn("runtime_agents:FanOut")
    spawn("runtime_agents:Child", "--concurrency", "3")
    items = [{"x": 1, "sleep_s": 0.1}, {"x": 2, "sleep_s": 0.2}, {"x": 3, "sleep_s": 40}]
    await consuming(bus, "fanout", "child")
    loop = asyncio.get_running_loop()
    started = loop.time()
    payload = {"items": items, "quorum": 2, "timeout": 20}
    done = await submit(bus, "fanout", json.dumps(payload).encode(), wait=True, timeout_s=30)
    assert done.status == "completed", done
    assert done.result == {"results": [2, 4, None]}
    assert loop.time() - started < 15


async def test_gather_timeout_fails_with_a_typed_error(bus: Bus, spawn: Spawn) -> None:
    spawn("runtime_agents:FanOut")
    spawn("runtime_agents:Child", "--concurrency", "2")
    await consuming(bus, "fanout", "child")
    payload = {"items": [{"x": 1, "sleep_s": 0.1}, {"x": 2, "sleep_s": 30}], "timeout": 1.5}
    done = await submit(bus, "fanout", json.dumps(payload).encode(), wait=True, timeout_s=30)
    assert done.status == "failed"
    assert (
        done.error is not None and done.error.startswith("GatherTimeout") and "1 of 2" in done.error
    )


async def test_a_failing_child_reaches_the_orchestrator_as_a_typed_error(
    bus: Bus, spawn: Spawn
) -> None:
    spawn("runtime_agents:FanOut")
    spawn("runtime_agents:Child")
    payload = {"items": [{"x": 1}, {"x": 2, "fail": True}]}
    done = await submit(bus, "fanout", json.dumps(payload).encode(), wait=True, timeout_s=30)
    assert done.status == "completed", done
    assert done.result == {"child_failed": {"type": "Reject", "message": "child 2 cannot do this"}}


async def test_signal_wait_survives_a_restart_of_every_agent_process(
    bus: Bus, spawn: Spawn
) -> None:
    first = spawn("runtime_agents:Approver", **FAST)
    run_id = await start_run(bus, "approver", {"order": 7})
    await wait_event(bus, run_id, "suspended")
    kill9(first)
    spawn("runtime_agents:Approver", **FAST)
    assert await send_signal(bus, run_id, "approval", {"by": "alice"}) is True
    done = await outcome(bus, run_id)
    assert done.status == "completed", done
    assert done.result == {"approved": {"by": "alice"}, "task": {"order": 7}}


async def test_a_signal_sent_before_the_wait_is_kept(bus: Bus, spawn: Spawn) -> None:
    run_id = await start_run(bus, "approver", {"order": 8})
    assert await send_signal(bus, run_id, "approval", "early") is False
    spawn("runtime_agents:Approver")
    done = await outcome(bus, run_id)
    assert done.result == {"approved": "early", "task": {"order": 8}}


async def test_ping_pong_loop_is_detected(bus: Bus, spawn: Spawn) -> None:
    spawn("runtime_agents:Ping")
    spawn("runtime_agents:Pong")
    done = await submit(bus, "ping", b"{}", wait=True, timeout_s=30)
    assert done.status == "failed"
    assert (
        done.error is not None
        and "handoff loop detected: ping → pong → ping → pong → ping" in done.error
    )
    record = await (await run_store(bus)).get(done.run_id)
    assert record is not None and record.status == "failed" and record.error is not None
    assert "loop" in record.error.message


async def test_hop_limit(bus: Bus, spawn: Spawn) -> None:
    spawn("runtime_agents:Ping")
    spawn("runtime_agents:Pong")
    done = await submit(bus, "ping", b"{}", wait=True, timeout_s=30, max_hops=3)
    assert done.status == "failed"
    assert done.error is not None and "hop limit 3 reached" in done.error


async def test_step_limit(bus: Bus, spawn: Spawn) -> None:
    spawn("runtime_agents:Stepper")
    done = await submit(bus, "stepper", b'{"steps": 50}', wait=True, timeout_s=30, max_steps=10)
    assert done.status == "failed"
    assert done.error is not None and "step limit 10 reached at step 's10'" in done.error
    ok = await submit(bus, "stepper", b'{"steps": 5}', wait=True, timeout_s=30, max_steps=10)
    assert ok.result == 5


async def test_deadline(bus: Bus, spawn: Spawn) -> None:
    spawn("runtime_agents:Sleeper")
    for _ in range(200):  # the 1 s deadline must not run out while the process starts
        if await has_consumer(bus, "sleeper"):
            break
        await asyncio.sleep(0.1)
    done = await submit(bus, "sleeper", b'{"sleep_s": 20}', wait=True, timeout_s=30, deadline_s=1.0)
    assert done.status == "failed"
    assert done.error is not None and "deadline exceeded" in done.error


async def test_cancel_stops_a_running_handler_within_a_second(bus: Bus, spawn: Spawn) -> None:
    spawn("runtime_agents:Sleeper")
    run_id = await start_run(bus, "sleeper", {"sleep_s": 60})
    await wait_event(bus, run_id, "started")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cancel_run(bus, run_id)
    record = await (await run_store(bus)).get(run_id)
    assert record is not None and record.status == "cancelled"
    done = await outcome(bus, run_id)
    assert done.status == "cancelled"
    # the handler stopped: its task record says cancelled (not still sleeping)
    journals = JournalStore(await Bucket.open(bus, bus.subjects.bucket("journal")), "sleeper")
    for _ in range(40):
        found = await journals.load(run_id, run_id)
        if found and found[0].status == "cancelled":
            break
        await asyncio.sleep(0.05)
    assert found is not None and found[0].status == "cancelled"
    assert loop.time() - started < 2.0


async def test_non_deterministic_handler_gets_a_divergence_error(bus: Bus, spawn: Spawn) -> None:
    spawn("runtime_agents:Wobbly")
    done = await submit(bus, "wobbly", b"{}", wait=True, timeout_s=30)
    assert done.status == "failed"
    assert done.error is not None and done.error.startswith("JournalDivergence: step 0")
    assert "handlers must be deterministic" in done.error


async def test_clock_and_random_are_journaled(bus: Bus, spawn: Spawn) -> None:
    spawn("runtime_agents:Clock")
    done = await submit(bus, "clock", b"{}", wait=True, timeout_s=30)
    assert done.status == "completed", done
    result = done.result
    assert [result["now"], result["random"]] == result["seen_first"]


def test_runs_and_run_show_from_the_cli(bus: Bus, settings: object, spawn: Spawn) -> None:
    spawn("relaybus.agents.demo.echo:Echo")
    env = child_env(settings)  # type: ignore[arg-type]
    out = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "publish", "echo", '{"a": 1}', "--wait", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    run_id = json.loads(out.stdout)["run_id"]
    show = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "run", "show", run_id, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    body = json.loads(show.stdout)
    assert (
        body["status"] == "completed"
        and body["result"] == {"a": 1}
        and body["ended"] >= body["started"]
    )
    runs = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "runs", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert run_id in [row["run_id"] for row in json.loads(runs.stdout)]


async def test_tool_arguments_are_validated_and_the_call_is_journaled(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    log = tmp_path / "tool"
    spawn("runtime_agents:ToolUser")
    done = await submit(
        bus,
        "tooluser",
        json.dumps({"a": 2, "b": 3, "log": str(log)}).encode(),
        wait=True,
        timeout_s=30,
    )
    assert done.status == "completed" and done.result == 5
    assert log.read_text().splitlines() == ["add"]  # the retry replayed it, not re-ran it
    bad = await submit(
        bus,
        "tooluser",
        json.dumps({"a": 2, "b": 3, "log": str(log), "admin": True}).encode(),
        wait=True,
        timeout_s=30,
    )
    assert bad.status == "failed"
    assert (
        bad.error is not None
        and "ToolArgumentsInvalid: tool add: admin: Extra inputs are not permitted" in bad.error
    )
    wrong = await submit(
        bus,
        "tooluser",
        json.dumps({"a": "x", "b": 3, "log": str(log)}).encode(),
        wait=True,
        timeout_s=30,
    )
    assert wrong.error is not None and "a: Input should be a valid integer" in wrong.error


def test_tool_declaration_errors_are_clear() -> None:
    import pytest

    from relaybus.agents import tool

    with pytest.raises(ValueError, match="command path"):
        tool("/bad/")
    with pytest.raises(TypeError, match="pydantic model"):
        tool("x/y")(lambda a: a)


async def test_a_task_given_up_on_fails_its_caller_and_its_run_until_replayed(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given a worker that dies in every attempt, one run on it and one run calling it
    until = tmp_path / "fixed"
    spawn("runtime_agents:CallsCrasher")
    crasher = spawn("runtime_agents:Crasher")
    task = json.dumps({"until": str(until)}).encode()
    direct = await submit(bus, "crasher", task)
    via = await submit(bus, "callscrasher", task)
    async with EventFeed(bus, direct.run_id, replay=True) as direct_feed:
        async with EventFeed(bus, via.run_id, replay=True) as via_feed:
            ended = asyncio.gather(
                wait_for_run(direct_feed, direct.run_id, 90, "crasher"),
                wait_for_run(via_feed, via.run_id, 90, "callscrasher"),
            )
            starts = 1
            for _ in range(120):  # each attempt kills the process: start it again (bounded)
                done, _ = await asyncio.wait([ended], timeout=1.0)
                if done:
                    break
                if crasher.poll() is not None and starts < 12:
                    crasher, starts = spawn("runtime_agents:Crasher"), starts + 1
            direct_out, via_out = await asyncio.wait_for(ended, 90)
    # Then the run on it failed (record, waiter and events agree), the caller got a typed error
    assert direct_out.status == "failed" and (direct_out.error or "").startswith("DeadLettered")
    record = await (await run_store(bus)).get(direct.run_id)
    assert record is not None and record.status == "failed" and record.error is not None
    assert (
        record.error.type == "DeadLettered" and "gave up after 3 attempts" in record.error.message
    )
    assert via_out.status == "completed" and via_out.result == {"child_failed": "DeadLettered"}
    # When the cause is fixed and the run's letter replayed, the same run completes
    until.touch()
    letters = [
        s for s, letter in await read_dead_letters(bus, 10) if letter.run_id == direct.run_id
    ]
    assert len(letters) == 1
    if crasher.poll() is not None:
        spawn("runtime_agents:Crasher")
    async with EventFeed(bus, direct.run_id, replay=False) as feed:
        await replay_dead_letter(bus, letters[0])
        again = await wait_for_run(feed, direct.run_id, 60, "crasher")
    record = await (await run_store(bus)).get(direct.run_id)
    assert again.status == "completed" and again.result == "survived", await describe_run(
        bus, direct.run_id, record
    )
    assert record is not None and record.status == "completed"


def test_a_timer_with_the_driving_task_message_s_sequence_does_not_pass_for_its_redelivery() -> (
    None
):
    # sequences count per stream: timer 7 and task message 7 are different deliveries
    journal = Journal(run_id="r", task_id="t", agent="a", task=b"", driver=driver_of("TASKS", 7))
    assert drives(journal, "TASKS", 7)
    assert not drives(journal, "TIMERS", 7)
    # a journal written before drivers named their stream matches as it did then
    legacy = Journal(run_id="r", task_id="t", agent="a", task=b"", driver="7")
    assert drives(legacy, "TASKS", 7) and drives(legacy, "TIMERS", 7)
    assert not drives(legacy, "TASKS", 8)


async def test_a_stale_remembered_journal_loses_no_merge_made_elsewhere(bus: Bus) -> None:
    await ensure(bus, default_topology(bus.subjects))
    bucket = await Bucket.open(bus, bus.subjects.bucket("journal"))
    here, there = JournalStore(bucket, "parent"), JournalStore(bucket, "parent")  # 2 replicas
    await here.create(
        Journal(run_id="r1", task_id="t1", agent="parent", task=b"", status="suspended")
    )
    # Given another replica merged child c1 after this one last wrote the journal
    await there.mutate("r1", "t1", lambda j: j.children.setdefault("c1", Outcome(ok=True)))
    stale = here.recent("r1", "t1")
    assert stale is not None and "c1" not in stale[0].children
    # When this replica merges c2 starting from its stale copy
    merged, _ = await here.mutate(
        "r1", "t1", lambda j: j.children.setdefault("c2", Outcome(ok=True)), current=stale
    )
    # Then the CAS write failed, was read again and both merges are in
    assert set(merged.children) == {"c1", "c2"}
    found = await JournalStore(bucket, "parent").load("r1", "t1")
    assert found is not None and set(found[0].children) == {"c1", "c2"}


async def test_children_answering_together_cost_their_parent_one_write_each(
    bus: Bus, spawn: Spawn
) -> None:
    """Outcomes of children that answer at once take turns at their parent's journal, each
    starting from the write before it: no write lost to another, no read to start again.
    (They raced before: eight children cost their parent 36 writes and 44 reads.)"""
    spawn("runtime_agents:FanOut")
    spawn("runtime_agents:Child", "--concurrency", "16")
    journal = bus.subjects.bucket("journal")
    writes: list[str] = []
    reads: list[str] = []

    async def seen(msg: object) -> None:
        subject = msg.subject  # type: ignore[attr-defined]
        (reads if subject.startswith("$JS.API.DIRECT.GET") else writes).append(subject)

    watcher = await bus.nc.subscribe(f"$KV.{journal}.>", cb=seen)
    getter = await bus.nc.subscribe(f"$JS.API.DIRECT.GET.KV_{journal}.>", cb=seen)
    await bus.nc.flush()
    children = 8
    items = [{"x": i} for i in range(children)]
    done = await submit(
        bus, "fanout", json.dumps({"items": items}).encode(), wait=True, timeout_s=60
    )
    assert done.status == "completed" and done.result == {
        "results": [2 * i for i in range(children)]
    }
    await asyncio.sleep(0.5)  # the last writes' copies reach this subscription
    await watcher.unsubscribe()
    await getter.unsubscribe()
    parent = [s for s in writes if s.endswith(".fanout") and done.run_id in s]
    # stored before its children, its wait parked, one merge per child but the last (whose
    # outcome wakes it and is stored by its end), its end
    assert len(parent) <= children + 2, parent
    assert not [s for s in reads if s.endswith(".fanout")], reads


async def test_a_child_s_answer_that_cannot_be_merged_waits_in_the_dlq_and_its_replay_ends_the_run(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given a parent waiting on one child that answers when told
    go = tmp_path / "go"
    spawn("runtime_agents:FanOut", RELAYBUS_MAX_DELIVER="2")  # two attempts of 20 s of KV retries
    spawn("runtime_agents:Child")
    run_id = await start_run(bus, "fanout", {"items": [{"x": 21, "go": str(go)}]})
    await wait_event(bus, run_id, "suspended", "fanout")  # its wait is stored
    # When the journal's bucket refuses every write (its stream full), and the child answers
    stream = f"KV_{bus.subjects.bucket('journal')}"
    config = (await bus.js.stream_info(stream)).config
    room = config.max_bytes
    config.max_bytes = 1
    await bus.js.update_stream(config)
    try:
        go.touch()
        lettered = await wait_event(bus, run_id, "dead_lettered", "fanout", timeout_s=120)
    finally:
        config.max_bytes = room
        await bus.js.update_stream(config)
    # Then the answer is dead-lettered after its attempts, named on the run, and nothing failed:
    # the run is not ended and the parent still waits for it
    assert lettered.attempt == 2, lettered
    record = await (await run_store(bus)).get(run_id)
    assert record is not None and record.status == "submitted", record
    letters = [s for s, letter in await read_dead_letters(bus, 10) if letter.run_id == run_id]
    assert len(letters) == 1
    # When the bucket takes writes again and the letter is replayed, the run completes with the
    # child's answer
    async with EventFeed(bus, run_id, replay=False) as feed:
        await replay_dead_letter(bus, letters[0])
        done = await wait_for_run(feed, run_id, 60, "fanout")
    assert done.status == "completed" and done.result == {"results": [42]}, await describe_run(
        bus, run_id, await (await run_store(bus)).get(run_id)
    )
