"""Agents as real OS processes against a real server."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from relaybus.agents.journal import JournalStore
from relaybus.agents.submit import submit, wait_for_run
from relaybus.bus import Bus, new_envelope
from relaybus.bus.envelope import to_message
from relaybus.bus.feed import EventFeed
from relaybus.bus.ids import new_id
from relaybus.bus.kv import Bucket

from ..conftest import Spawn, consuming, wait_for


async def test_publish_and_consume_across_two_processes(bus: Bus, spawn: Spawn) -> None:
    # Given an echo agent in its own process
    spawn("relaybus.agents.demo.echo:Echo")
    # When a task is published from this process
    outcome = await submit(bus, "echo", b'{"x": 1, "y": [1, 2]}', wait=True, timeout_s=30)
    # Then the other process echoes it back
    assert outcome.status == "completed"
    assert outcome.result == {"x": 1, "y": [1, 2]}


async def test_redelivery_after_a_worker_crash(bus: Bus, spawn: Spawn, tmp_path: Path) -> None:
    # Given two replicas of an agent that dies mid-handler on the first attempt
    log = tmp_path / "attempts"
    for _ in range(2):
        spawn("agents_for_tests:CrashFirst", RELAYBUS_ACK_WAIT_S="2")
    # When a task arrives, its first worker is killed before acking
    outcome = await submit(
        bus, "crashfirst", json.dumps({"log": str(log)}).encode(), wait=True, timeout_s=40
    )
    # Then the message is redelivered and the run completes on the second attempt
    assert outcome.status == "completed", outcome
    assert outcome.result == {"attempts": 2}
    pids = log.read_text().split()
    assert len(pids) == 2


async def test_heartbeats_keep_a_long_handlers_message(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given an ack wait of 1.5 s and a handler that takes 5 s
    log = tmp_path / "attempts"
    spawn("agents_for_tests:Slow", RELAYBUS_ACK_WAIT_S="1.5")
    spawn("agents_for_tests:Slow", RELAYBUS_ACK_WAIT_S="1.5")
    outcome = await submit(
        bus, "slow", json.dumps({"log": str(log), "sleep_s": 5}).encode(), wait=True, timeout_s=40
    )
    # Then in-progress heartbeats kept the message: it ran exactly once
    assert outcome.status == "completed", outcome
    assert outcome.result == {"attempts": 1}
    assert len(log.read_text().split()) == 1


async def test_bad_input_fails_the_run_naming_the_field_without_retries(
    bus: Bus, spawn: Spawn
) -> None:
    spawn("agents_for_tests:Typed")
    outcome = await submit(
        bus, "typed", b'{"count": "three", "label": "x"}', wait=True, timeout_s=30
    )
    assert outcome.status == "failed"
    assert (
        outcome.error is not None
        and "$.count" in outcome.error
        and "Expected `int`" in outcome.error
    )
    ok = await submit(bus, "typed", b'{"count": 3, "label": "x"}', wait=True, timeout_s=30)
    assert ok.result == {"doubled": 6, "label": "x"}


async def test_sigterm_lets_the_in_flight_handler_finish(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    log = tmp_path / "attempts"
    proc = spawn("agents_for_tests:Slow")
    from relaybus.bus.feed import EventFeed

    async with EventFeed(bus, replay=False) as feed:
        pending = submit(
            bus,
            "slow",
            json.dumps({"log": str(log), "sleep_s": 2}).encode(),
            wait=True,
            timeout_s=30,
        )
        import asyncio

        task = asyncio.ensure_future(pending)
        while (event := await feed.next(20)) is not None and event.kind != "started":
            pass
        assert event is not None
        proc.send_signal(signal.SIGTERM)  # while the handler sleeps
        outcome = await task
    assert outcome.status == "completed"
    assert proc.wait(20) == 0
    await wait_for(lambda: log.exists(), what="the handler's record")
    assert len(log.read_text().split()) == 1


def test_unknown_agent_spec_is_a_clear_error() -> None:
    from ..conftest import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "agent", "run", "nowhere:Nothing"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 1
    assert "cannot import 'nowhere'" in out.stderr


async def test_a_replica_stalled_past_its_ack_wait_does_not_run_the_tool_again(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given two replicas, the first to reach the tool blocking its process for 3 s (ack wait
    # 1.5 s): no heartbeats, so the server hands the task to the other replica meanwhile
    log, marker = tmp_path / "effects", tmp_path / "stalled"
    for _ in range(2):
        spawn(
            "agents_for_tests:Staller",
            RELAYBUS_ACK_WAIT_S="1.5",
            STALL_MARKER=str(marker),
            STALL_S="3",
        )
    outcome = await submit(
        bus, "staller", json.dumps({"log": str(log)}).encode(), wait=True, timeout_s=40
    )
    assert outcome.status == "completed", outcome
    assert marker.exists()  # the stall happened
    # Then the effect happened once: the stalled replica saw its lease lapse and stopped
    await asyncio.sleep(3.5)  # past the stall, and past the stalled replica's tool call
    assert len(log.read_text().splitlines()) == 1, log.read_text()


async def test_a_dead_lettered_task_s_stalled_execution_cannot_end_it_again(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given one attempt allowed, and the replica running it stalled past the ack wait
    marker = tmp_path / "stalled"
    for _ in range(2):
        spawn(
            "agents_for_tests:SleepyOnce",
            RELAYBUS_ACK_WAIT_S="1.5",
            RELAYBUS_MAX_DELIVER="1",
            STALL_MARKER=str(marker),
            STALL_S="3",
        )
    outcome = await submit(
        bus, "sleepyonce", json.dumps({"log": ""}).encode(), wait=True, timeout_s=40
    )
    # When the redelivery is over the limit: the task is dead-lettered and the run fails
    assert outcome.status == "failed" and "DeadLettered" in (outcome.error or ""), outcome
    await asyncio.sleep(3.5)  # the stalled replica wakes and tries to end the task
    # Then its end was fenced off: the task stays failed, as its run is
    journals = JournalStore(await Bucket.open(bus, bus.subjects.bucket("journal")), "sleepyonce")
    found = await journals.load(outcome.run_id, outcome.run_id)
    assert found is not None and found[0].status == "failed", found


async def test_a_duplicate_of_a_running_task_never_reaches_its_effect(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    # Given a task that journals nothing for a second, then applies an effect, and a duplicate
    # of it sent meanwhile under a message id of its own (past the stream's duplicate window)
    log = tmp_path / "effects"
    for _ in range(2):
        spawn("agents_for_tests:Effector", RELAYBUS_ACK_WAIT_S="1.5")
    await consuming(bus, "effector")
    task = new_envelope(
        kind="task",
        sender="user:t",
        recipient="effector",
        payload=json.dumps({"log": str(log), "sleep_s": 1.0}).encode(),
    )
    async with EventFeed(bus, task.run_id) as feed:
        await bus.publish(task)
        await asyncio.sleep(0.2)
        headers, body = to_message(task)
        await bus.publish_bytes(
            bus.subjects.task_admitted("effector"), body, {**headers, "Nats-Msg-Id": new_id()}
        )
        outcome = await wait_for_run(feed, task.run_id, timeout_s=30, agent="effector")
    # Then both started, but the journal stored by the first write before the effect fenced
    # the second off: one effect, one outcome
    assert outcome.status == "completed" and outcome.result == "applied", outcome
    await asyncio.sleep(3.0)  # the duplicate's redelivery, after the ack wait, ends quietly
    assert len(log.read_text().splitlines()) == 1, log.read_text()


async def test_an_agent_stopped_while_its_server_is_gone_exits_cleanly(tmp_path: Path) -> None:
    """`relaybus down` leaves agent processes retrying the server; stopping one then used to
    end in a traceback (its drain on a lost connection) instead of one line."""
    from relaybus.bus import NatsServer, Settings

    from ..conftest import child_env

    with NatsServer(tmp_path / "nats") as server:
        settings = Settings.from_env({}, nats_url=server.url, nats_auth=False, home=tmp_path)
        run_echo = ["agent", "run", "relaybus.agents.demo.echo:Echo"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", *run_echo],
            env=child_env(settings),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            async with Bus(settings, name="test") as bus:
                await consuming(bus, "echo")
        except BaseException:
            proc.kill()
            raise
    await asyncio.sleep(1.5)  # the server is gone; the agent retries it
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
