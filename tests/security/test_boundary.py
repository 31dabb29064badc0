"""The trust boundary, attacked from outside the chain: an anonymous local process, a hostile
agent on its own NATS key, a replayed chain, forged results, signals, events and dead letters.
Each test asserts the refusal, the audit record where one is due, and that nothing changed."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import pytest

from relaybus.agents.messages import CancelRun, ChildResult, Signal, StopTasks, TimerFired
from relaybus.agents.submit import run_store, submit, wait_for_run
from relaybus.bus import (
    Bus,
    ConnectionFailed,
    Envelope,
    Event,
    PermissionDenied,
    PermissionViolation,
    RelayError,
    new_id,
    to_message,
)
from relaybus.bus.cli import replay_dead_letter
from relaybus.bus.envelope import derived_id
from relaybus.bus.events import DeadLetter, event_encoder
from relaybus.bus.feed import EventFeed
from relaybus.bus.stack import public_url, read_stack
from relaybus.services.identity.client import IdentityClient, read_audit
from relaybus.services.runs.client import AuthorityRunWriter
from relaybus.services.runs.state import Finish, RegisterWait, Reopen

from .conftest import USER, SecureStack


async def _refused(bus: Bus, subject: str, data: bytes = b"{}") -> None:
    """A core publish the server must refuse for this connection's NATS user."""
    with pytest.raises(PermissionViolation):
        await bus.publish_core(subject, data, confirm_s=2.0)


async def test_an_anonymous_local_process_cannot_connect(secure: SecureStack) -> None:
    # a plain local process speaking the NATS protocol with no credentials
    record = read_stack(secure.settings)
    assert record is not None
    host, port = public_url(record.nats_url).removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert info.startswith(b"INFO ") and b'"auth_required":true' in info
        writer.write(
            b'CONNECT {"verbose":false,"pedantic":false}\r\nPUB relay.task.echo 2\r\n{}\r\nPING\r\n'
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert b"Authorization Violation" in answer, answer


async def test_a_hostile_agent_cannot_write_control_plane_state(secure: SecureStack) -> None:
    p = secure.settings.prefix
    async with secure.hostile() as bus:
        # identity administration (register itself wider, add users, issue tokens)
        for op in ("agent_add", "user_add", "token", "revoke", "role_add", "user_list"):
            await _refused(bus, f"{p}.svc.identity.{op}")
        # the registry, revocations and the service key; another agent's journal
        for key in (
            "$KV.relay_runs.RUN",
            "$KV.relay_agents.mallory",
            "$KV.relay_revoked.agent_x",
            "$KV.relay_users.alice",
            "$KV.relay_journal.r.t.fanout",
        ):
            await _refused(bus, key)
        # another agent's name on tasks, events and audit; a user's (bare) task subject
        await _refused(bus, f"{p}.task.fanout.child")
        await _refused(bus, f"{p}.task.fanout")
        await _refused(bus, f"{p}.event.RUN.completed")
        await _refused(bus, f"{p}.event.RUN.completed.fanout")
        await _refused(bus, f"{p}.audit.alice")
        await _refused(bus, f"{p}.dlq.fanout")
        # consumer configurations (another agent's subjects, a delivery subject anywhere),
        # stream subject lists, run records and other agents' journals
        for api in (
            "$JS.API.CONSUMER.CREATE.RELAY_TASKS.agent_mallory",
            "$JS.API.CONSUMER.DURABLE.CREATE.RELAY_TASKS.agent_mallory",
            "$JS.API.CONSUMER.CREATE.RELAY_TIMERS.timer_mallory",
            "$JS.API.CONSUMER.CREATE.RELAY_TASKS.x.relay.task.fanout",
            "$JS.API.STREAM.INFO.RELAY_TASKS",
            "$JS.API.STREAM.INFO.KV_relay_runs",
            "$JS.API.DIRECT.GET.KV_relay_runs.$KV.relay_runs.RUN",
            "$JS.API.DIRECT.GET.KV_relay_journal.$KV.relay_journal.r.t.fanout",
            "$JS.API.STREAM.MSG.GET.KV_relay_journal",
        ):
            await _refused(bus, api)
    # and the registry still says what the operator registered
    async with Bus(secure.settings) as op:
        agents = {a["name"]: a for a in await IdentityClient(op).list_agents()}
    assert agents["mallory"]["handoff_to"] == ["fanout", "approver", "child"]
    assert not agents["mallory"].get("scopes")


async def test_a_forged_child_result_is_refused_and_audited(secure: SecureStack) -> None:
    # Given a fan-out run whose child answers only after a while
    secure.start_agent("runtime_agents:FanOut")
    secure.start_agent("runtime_agents:Child")
    async with Bus(secure.settings) as op:
        run = await submit(
            op,
            "fanout",
            b'{"items": [{"x": 2, "sleep_s": 3}]}',
            sender=f"user:{USER}",
            token=secure.token,
        )
        async with EventFeed(op, run.run_id, replay=True) as feed:
            call = await _next_kind(feed, "call")
            # When mallory (allowed to call fanout) sends the awaited child's result itself
            forged = ChildResult(child=call.child_id, ok=True, result=msgspec.Raw(b"999"))
            async with secure.hostile() as bus:
                await bus.publish(
                    Envelope(
                        id=new_id(),
                        run_id=run.run_id,
                        kind="result",
                        sender="mallory",
                        recipient="fanout",
                        parent_id=call.envelope_id,
                        created_at=time.time(),
                        payload=msgspec.json.encode(forged),
                    )
                )
            outcome = await wait_for_run(feed, run.run_id, 60, "fanout")
        # Then the run completes with the real child's answer, and the forgery is audited
        assert outcome.status == "completed" and outcome.result == {"results": [4]}
        denials = await read_audit(op, USER, run_id=run.run_id, decision="deny")
    assert any(
        d.action == "message/result" and "must come from child" in d.reason for d in denials
    ), denials


async def test_a_signal_from_an_agent_is_refused_and_an_operators_is_honoured(
    secure: SecureStack,
) -> None:
    secure.start_agent("runtime_agents:Approver")
    async with Bus(secure.settings) as op:
        run = await submit(
            op, "approver", b'{"amount": 200}', sender=f"user:{USER}", token=secure.token
        )
        async with EventFeed(op, run.run_id, replay=True) as feed:
            suspended = await _next_kind(feed, "suspended")
            # When mallory sends the approval the run waits for
            async with secure.hostile() as bus:
                await bus.publish(
                    Envelope(
                        id=new_id(),
                        run_id=run.run_id,
                        kind="signal",
                        sender="mallory",
                        recipient="approver",
                        parent_id=suspended.envelope_id,
                        created_at=time.time(),
                        payload=msgspec.json.encode(
                            Signal(name="approval", data=msgspec.Raw(b'"yes"'))
                        ),
                    )
                )
            denied = await _next_kind(feed, "denied")
            assert "never from an agent" in denied.detail
            # Then the run still waits; the operator's own approval goes through
            from relaybus.agents.control import send_signal

            assert await send_signal(op, run.run_id, "approval", "operator-ok")
            outcome = await wait_for_run(feed, run.run_id, 60, "approver")
        assert outcome.status == "completed"
        assert outcome.result["approved"] == "operator-ok"
        denials = await read_audit(op, USER, run_id=run.run_id, decision="deny")
    assert any(d.action == "message/signal" for d in denials)


async def test_a_flood_of_forged_timers_takes_no_slot_of_the_agent(secure: SecureStack) -> None:
    # Given approver, and mallory (allowed to call it) sending 300 signals with timers due in
    # a year, none of them its own (the review's attack filled all 1,000 ack-pending slots)
    secure.start_agent("runtime_agents:Approver")
    async with Bus(secure.settings) as op, secure.hostile() as bus:
        year = time.time() + 365 * 86400
        for i in range(300):
            body = TimerFired(timer=f"T{i}", due=year)
            await bus.publish(
                Envelope(
                    id=new_id(),
                    run_id=new_id(),
                    kind="signal",
                    sender="mallory",
                    recipient="approver",
                    parent_id=new_id(),
                    created_at=time.time(),
                    payload=msgspec.json.encode(body),
                )
            )
        # When a user's run arrives behind them, it is served, and nothing is left pending
        run = await submit(op, "approver", b"{}", sender=f"user:{USER}", token=secure.token)
        async with EventFeed(op, run.run_id, replay=True) as feed:
            await _next_kind(feed, "suspended", timeout_s=60)
        info = await op.js.consumer_info(
            op.subjects.stream("TASKS"), op.subjects.durable("approver")
        )
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_chain_replayed_with_another_payload_or_task_is_refused(
    secure: SecureStack,
) -> None:
    # Given a completed run whose envelope (with its chain) an attacker has seen
    async with Bus(secure.settings) as op:
        child_task = await _finished_child_task(secure, op)
        # When mallory replays the chain on a new task with its own payload, and on a new id
        async with EventFeed(op, child_task.run_id) as feed, secure.hostile() as bus:
            for forged in (
                msgspec.structs.replace(
                    child_task,
                    id=new_id(),
                    sender="mallory",
                    payload=b'{"x": 500}',
                    parent_id="",
                    reply_to="",
                ),
                msgspec.structs.replace(
                    child_task, id=new_id(), sender="mallory", parent_id="", reply_to=""
                ),
            ):
                await bus.publish(forged)
                denied = await _next_kind(feed, "denied")
                assert "bound to the one task and payload" in denied.detail
        denials = await read_audit(op, USER, run_id=child_task.run_id, decision="deny")
    assert sum(d.action == "chain/verify" for d in denials) == 2


async def test_a_finished_task_id_reused_by_another_sender_gets_no_recorded_result(
    secure: SecureStack,
) -> None:
    # Given a completed run: child's task is finished and its result recorded in the journal
    async with Bus(secure.settings) as op:
        child_task = await _finished_child_task(secure, op)
        to_mallory = await op.nc.subscribe(op.subjects.task_from("mallory", "child"))
        # When mallory sends that task again, same id, payload and chain, answered to itself
        # (with a message id of its own, as after the stream's duplicate window)
        async with EventFeed(op, child_task.run_id) as feed, secure.hostile() as bus:
            reused = msgspec.structs.replace(
                child_task, sender="mallory", parent_id=new_id(), reply_to="mallory"
            )
            headers, body = to_message(reused, 1 << 20)
            await bus.publish_bytes(
                bus.subjects.task_from("child", "mallory"),
                body,
                {**headers, "Nats-Msg-Id": new_id()},
            )
            denied = await _next_kind(feed, "denied")
        # Then the recorded result is not sent to mallory, and the refusal says why
        assert "already finished with another sender" in denied.detail
        with pytest.raises(TimeoutError):
            await to_mallory.next_msg(timeout=2)
        denials = await read_audit(op, USER, run_id=child_task.run_id, decision="deny")
    assert any(d.action == "message/task" for d in denials)


async def test_a_message_id_taken_first_by_an_agent_does_not_swallow_a_users_task(
    secure: SecureStack,
) -> None:
    # Given a run id mallory knows before the user submits it (an order number, say)
    secure.start_agent("runtime_agents:FanOut")
    secure.start_agent("runtime_agents:Child")
    run_id = f"order-{new_id()}"
    async with Bus(secure.settings) as op, secure.hostile() as bus:
        # When mallory first stores a message under the id the run's first task derives from it
        # (raw NATS: a hostile process sets any Nats-Msg-Id it likes on its own subject)
        await bus.js.publish(
            bus.subjects.task_from("fanout", "mallory"),
            b"{}",
            headers={"Nats-Msg-Id": derived_id(run_id, "submit", "fanout")},
        )
        # Then the user's run is stored, runs and completes all the same
        run = await submit(
            op,
            "fanout",
            b'{"items": [{"x": 1}, {"x": 2}]}',
            sender=f"user:{USER}",
            token=secure.token,
            run_id=run_id,
            wait=True,
            timeout_s=60,
        )
    assert run.status == "completed", run.error


async def test_a_forged_completed_event_does_not_end_a_waiting_submission(
    secure: SecureStack,
) -> None:
    secure.start_agent("runtime_agents:Approver")
    async with Bus(secure.settings) as op:
        run = await submit(op, "approver", b"{}", sender=f"user:{USER}", token=secure.token)
        async with EventFeed(op, run.run_id, replay=True) as feed:
            await _next_kind(feed, "suspended")
            # mallory may publish events only under its own name; the waiter ignores them
            async with secure.hostile() as bus:
                fake = Event(
                    run_id=run.run_id,
                    kind="completed",
                    result=msgspec.Raw(b'{"approved": "forged"}'),
                )
                await bus.publish_bytes(
                    bus.subjects.event(run.run_id, "completed", "mallory"),
                    event_encoder.encode(fake),
                )
            waited = await wait_for_run(feed, run.run_id, 3, "approver")
    assert waited.status == "timeout"


async def test_a_submitter_waiting_takes_no_outcome_from_outside_the_runs_line(
    secure: SecureStack,
) -> None:
    # Given a waiting submission to approver, which suspends for an approval
    secure.start_agent("runtime_agents:Approver")
    run_id = new_id()
    async with Bus(secure.settings) as op:
        waiting = asyncio.create_task(
            submit(
                op,
                "approver",
                b"{}",
                sender=f"user:{USER}",
                token=secure.token,
                wait=True,
                timeout_s=6,
                run_id=run_id,
            )
        )
        await asyncio.sleep(2.0)
        # When mallory publishes a `completed` with a result under its own name, and an
        # operator-shaped one with no agent token
        async with secure.hostile() as bus:
            for source in ("mallory", ""):
                fake = Event(run_id=run_id, kind="completed", result=msgspec.Raw(b'"forged"'))
                with contextlib.suppress(PermissionViolation):
                    await bus.publish_core(
                        bus.subjects.event(run_id, "completed", source),
                        event_encoder.encode(fake),
                        confirm_s=0.5,
                    )
        outcome = await waiting
    # Then the submission still waits for approver (and times out here): nothing forged
    assert outcome.status == "timeout", outcome


async def test_the_run_authority_refuses_an_agent_outside_the_run(secure: SecureStack) -> None:
    # Given a run of approver's, waiting for its approval
    secure.start_agent("runtime_agents:Approver")
    async with Bus(secure.settings) as op:
        run = await submit(op, "approver", b"{}", sender=f"user:{USER}", token=secure.token)
        async with EventFeed(op, run.run_id, replay=True) as feed:
            await _next_kind(feed, "suspended")
        store = await run_store(op)
        before = await store.get(run.run_id)
        # When mallory asks the authority to finish it, and to take over its waiter
        async with secure.hostile() as bus:
            writer = AuthorityRunWriter(bus, "mallory")
            for change in (
                Finish(status="completed", result=msgspec.Raw(b'"forged"')),
                RegisterWait(name="approval", task_id="STOLEN"),
            ):
                with pytest.raises(PermissionDenied, match="does not hold run"):
                    await writer.change(run.run_id, change, ())
            # nor can it use another agent's subject to ask
            await _refused(bus, f"{bus.subjects.prefix}.svc.runs.approver")
        # Then the record is as it was, and both refusals are audited
        assert await store.get(run.run_id) == before
        denials = await read_audit(op, USER, run_id=run.run_id, decision="deny")
    assert {d.action for d in denials} == {"run/Finish", "run/RegisterWait"}


async def test_a_compromised_child_cannot_finish_the_run_or_take_its_waits(
    secure: SecureStack,
) -> None:
    # Given a fan-out run whose child has answered, and the child's own (valid) chain
    async with Bus(secure.settings) as op:
        child_task = await _finished_child_task(secure, op)
        before = await (await run_store(op)).get(child_task.run_id)
        # When the child (compromised) asks the run authority with that chain
        async with secure.hostile("child") as bus:
            writer = AuthorityRunWriter(bus, "child")
            for change in (
                Finish(status="completed", result=msgspec.Raw(b'"forged"')),
                Reopen(),
                RegisterWait(name="approval", task_id=child_task.run_id),
            ):
                with pytest.raises(PermissionDenied, match="does not hold run"):
                    await writer.change(child_task.run_id, change, child_task.chain)
        # Then the run's record is unchanged
        assert await (await run_store(op)).get(child_task.run_id) == before


async def test_a_dead_letter_an_agent_wrote_for_another_is_not_replayed(
    secure: SecureStack,
) -> None:
    async with secure.hostile() as bus, Bus(secure.settings) as op:
        letter = DeadLetter(
            agent="fanout",
            subject=f"{op.subjects.prefix}.task.fanout",
            reason="x",
            attempts=1,
            time=time.time(),
            data=b"\x80",
            headers={},
        )
        seq = await bus.publish_bytes(bus.subjects.dlq("mallory"), event_encoder.encode(letter))
        with pytest.raises(RelayError, match="only to the agent whose consume loop wrote it"):
            await replay_dead_letter(op, seq)


async def test_a_root_link_lives_no_longer_than_the_cap(secure: SecureStack) -> None:
    async with Bus(secure.settings) as op:
        with pytest.raises(RelayError, match="RELAYBUS_IDENTITY_MAX_ROOT_TTL_S"):
            await IdentityClient(op).root(
                USER, secure.token, new_id(), "fanout", ttl_s=95 * 365 * 86400.0
            )


async def test_an_unregistered_nkey_cannot_connect(secure: SecureStack) -> None:
    from relaybus.services.identity.natsconfig import write_nkey

    write_nkey(secure.home, "stranger")
    with pytest.raises(ConnectionFailed, match="credentials"):
        async with secure.hostile("stranger"):
            pass


async def _finished_child_task(secure: SecureStack, op: Bus) -> Envelope:
    """Run fanout → child to completion for the test user; the task child finished."""
    secure.start_agent("runtime_agents:FanOut")
    secure.start_agent("runtime_agents:Child")
    run = await submit(
        op,
        "fanout",
        b'{"items": [{"x": 1}]}',
        sender=f"user:{USER}",
        token=secure.token,
        wait=True,
        timeout_s=60,
    )
    assert run.status == "completed"
    return await _child_task(op, run.run_id)


async def _child_task(op: Bus, run_id: str) -> Envelope:
    """The task fanout sent to child in run `run_id`, as the child's journal recorded it."""
    from relaybus.agents.journal import JournalStore
    from relaybus.bus.envelope import decode
    from relaybus.bus.kv import Bucket

    bucket = await Bucket.open(op, op.subjects.bucket("journal"))
    key = next(k for k in await bucket.keys() if k.startswith(run_id) and k.endswith(".child"))
    found = await JournalStore(bucket, "child").load(run_id, key.split(".")[1])
    assert found is not None
    return decode(found[0].task)


async def _next_kind(feed: EventFeed, kind: str, timeout_s: float = 30.0) -> Event:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (event := await feed.next(deadline - loop.time())) is not None:
        if event.kind == kind:
            return event
    raise AssertionError(f"no {kind} event within {timeout_s}s")


async def test_the_ledger_and_memory_services_cannot_write_the_control_plane(
    secure: SecureStack,
) -> None:
    import json

    block = (secure.home / "nats-auth.conf").read_text()
    users = json.loads(block[block.index("[") : block.rindex("]") + 1])
    passwords = {u["user"]: u["password"] for u in users if "user" in u}
    record = read_stack(secure.settings)
    assert record is not None
    for service in ("ledger", "memory"):
        url = public_url(record.nats_url).replace(
            "nats://", f"nats://{service}:{passwords[service]}@"
        )
        as_service = secure.settings.model_copy(update={"nats_url": url})
        async with Bus(as_service, name=f"as-{service}") as bus:
            p = bus.subjects.prefix
            for subject in (
                "$KV.relay_agents.mallory",
                "$KV.relay_runs.RUN",
                f"{p}.task.fanout",
                f"{p}.svc.identity.agent_add",
                "$JS.API.STREAM.PURGE.RELAY_AUDIT",
                # nor read tasks, where a plain task carries its user's token to the ingress
                "$JS.API.CONSUMER.CREATE.RELAY_TASKS",
                "$JS.API.STREAM.MSG.GET.RELAY_TASKS",
                "$JS.API.DIRECT.GET.RELAY_TASKS",
                # nor find or delete the registry's watches (a silenced revocation watch)
                "$JS.API.CONSUMER.LIST.KV_relay_revoked",
                "$JS.API.CONSUMER.NAMES.KV_relay_agents",
                "$JS.API.CONSUMER.DELETE.KV_relay_revoked.somewatch",
                # nor speak for an agent on the events (a waiter trusts its line's `completed`)
                f"{p}.event.RUN.completed.fanout",
            ):
                await _refused(bus, subject)
            with pytest.raises(PermissionViolation):
                sub = await bus.nc.subscribe(f"{p}.task.>")
                await bus.nc.flush()
                await asyncio.sleep(0.5)
                bus.raise_violation(f"{p}.task.>")
                await sub.unsubscribe()


async def test_the_ingress_cannot_administer_identity_or_write_the_registry(
    secure: SecureStack,
) -> None:
    import json

    block = (secure.home / "nats-auth.conf").read_text()
    users = json.loads(block[block.index("[") : block.rindex("]") + 1])
    password = next(u["password"] for u in users if u.get("user") == "ingress")
    record = read_stack(secure.settings)
    assert record is not None
    url = public_url(record.nats_url).replace("nats://", f"nats://ingress:{password}@")
    async with Bus(secure.settings.model_copy(update={"nats_url": url}), name="as-in") as bus:
        p = bus.subjects.prefix
        for subject in (
            "$KV.relay_agents.mallory",
            "$KV.relay_users.mallory",
            "$KV.relay_journal.RUN.TASK.child",
            f"{p}.svc.identity.agent_add",
            f"{p}.svc.identity.token.mallory",
            f"{p}.timer.child",
            "$JS.API.STREAM.PURGE.RELAY_AUDIT",
            "$JS.API.CONSUMER.LIST.KV_relay_users",
            "$JS.API.CONSUMER.DELETE.KV_relay_revoked.somewatch",
            "$JS.API.STREAM.DELETE.RELAY_TASKS",
            f"{p}.event.RUN.completed.fanout",
        ):
            await _refused(bus, subject)


async def test_an_agent_cannot_cancel_a_run_or_another_agents_tasks(secure: SecureStack) -> None:

    # Given a running handler (it sleeps 3 s)
    secure.start_agent("runtime_agents:Sleeper")
    async with Bus(secure.settings) as op:
        run = await submit(
            op, "sleeper", b'{"sleep_s": 3}', sender=f"user:{USER}", token=secure.token
        )
        async with EventFeed(op, run.run_id, replay=True) as feed:
            await _next_kind(feed, "started")
            # When mallory cancels the run and its task on its own control subject
            async with secure.hostile() as bus:
                for control in (
                    CancelRun(run_id=run.run_id),
                    StopTasks(run_id=run.run_id, tasks=[run.run_id]),
                ):
                    await bus.publish_core(
                        bus.subjects.control(run.run_id, "mallory"),
                        msgspec.json.encode(control),
                        confirm_s=1.0,
                    )
                await _refused(bus, bus.subjects.control(run.run_id))  # the operator's subject
            # Then the handler runs to its end
            outcome = await wait_for_run(feed, run.run_id, 60, "sleeper")
    assert outcome.status == "completed", outcome


async def test_a_revoked_agent_loses_its_nats_user(secure: SecureStack) -> None:
    async with Bus(secure.settings) as op:
        await IdentityClient(op).revoke("agent", "mallory", "compromised")
    conf = secure.home / "nats-auth.conf"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while (secure.home / "keys" / "mallory.nk").exists() and loop.time() < deadline:
        from nkeys import from_seed

        public = from_seed((secure.home / "keys" / "mallory.nk").read_bytes()).public_key
        if public.decode() not in conf.read_text():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the reload
    with pytest.raises(ConnectionFailed, match="credentials"):
        async with secure.hostile():
            pass


async def test_the_console_and_trace_leave_out_events_from_outside_the_run(
    secure: SecureStack,
) -> None:
    from relaybus.agents.observe import load_tree

    secure.start_agent("runtime_agents:Approver")
    async with Bus(secure.settings) as op:
        run = await submit(op, "approver", b"{}", sender=f"user:{USER}", token=secure.token)
        async with EventFeed(op, run.run_id, replay=True) as feed:
            await _next_kind(feed, "suspended")
        async with secure.hostile() as bus:
            for kind in ("completed", "denied"):
                fake = Event(
                    run_id=run.run_id,
                    kind=kind,
                    detail="forged by mallory",
                    envelope_id=run.run_id,
                    sender="user:alice",
                    recipient="approver",
                )
                await bus.publish_bytes(
                    bus.subjects.event(run.run_id, kind, "mallory"), event_encoder.encode(fake)
                )
            # and one aimed at another run's readers from this run's subject
            other = Event(run_id=new_id(), kind="completed", detail="forged by mallory")
            await bus.publish_bytes(
                bus.subjects.event(run.run_id, "completed", "mallory"),
                event_encoder.encode(other),
            )
        tree = await load_tree(op, run.run_id)
    assert tree.status != "completed"
    assert not any("forged" in d for d in tree.denials), tree.denials


async def test_resubmitting_a_run_id_needs_the_owners_token_before_anything_is_said(
    secure: SecureStack,
) -> None:
    # Given alice's run under her own run id (an order number)
    secure.start_agent("runtime_agents:FanOut")
    secure.start_agent("runtime_agents:Child")
    async with Bus(secure.settings) as op:
        first = await submit(
            op,
            "fanout",
            b'{"items": [{"x": 4}]}',
            sender=f"user:{USER}",
            token=secure.token,
            run_id="order-4711",
            wait=True,
            timeout_s=60,
        )
        assert first.status == "completed" and first.result == {"results": [8]}
        # When someone claims to be alice with a wrong token, or a stranger tries the same id
        for sender, token in ((f"user:{USER}", "rb_alice_x_guess"), ("user:eve", "rb_eve_y_z")):
            with pytest.raises(PermissionDenied) as refused:
                await submit(
                    op,
                    "fanout",
                    b'{"items": [{"x": 4}]}',
                    sender=sender,
                    token=token,
                    run_id="order-4711",
                    wait=True,
                    timeout_s=10,
                )
            # Then nothing about the run comes back, not even whose it is
            assert "order-4711" not in str(refused.value) and "fanout" not in str(refused.value)
        # And alice herself gets the same run's outcome, nothing new starts
        again = await submit(
            op,
            "fanout",
            b'{"items": [{"x": 4}]}',
            sender=f"user:{USER}",
            token=secure.token,
            run_id="order-4711",
            wait=True,
            timeout_s=30,
        )
        assert again.run_id == first.run_id and again.result == {"results": [8]}
        denials = await read_audit(op, USER, decision="deny")
    assert any(d.action == "user/authenticate" for d in denials)
