"""The consume loop against a real server: retries, dead letters, bad envelopes, dedupe."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from nats.js import api

from relaybus.bus import (
    Bus,
    Consumer,
    Delivery,
    NatsServer,
    PermissionViolation,
    Reject,
    Retry,
    Settings,
    new_envelope,
)
from relaybus.bus.cli import read_dead_letters
from relaybus.bus.events import DeadLetter, dead_letter_decoder
from relaybus.bus.lease import Lease


@asynccontextmanager
async def running(
    bus: Bus, agent: str, handler: Callable[[Delivery], Awaitable[None]], **kw: object
) -> AsyncIterator[Consumer]:
    stop = asyncio.Event()
    consumer = Consumer(bus, agent, handler, **kw)  # type: ignore[arg-type]
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


class DeadLetters:
    def __init__(self, bus: Bus, agent: str) -> None:
        self.bus, self.agent = bus, agent

    async def __aenter__(self) -> DeadLetters:
        self.sub = await self.bus.js.subscribe(
            self.bus.subjects.dlq(self.agent),
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    async def next(self, timeout_s: float = 15) -> DeadLetter:
        msg = await self.sub.next_msg(timeout=timeout_s)
        return dead_letter_decoder.decode(msg.data)


async def test_poison_message_reaches_dlq_after_exactly_max_deliver_attempts(bus: Bus) -> None:
    attempts: list[int] = []

    async def always_fails(d: Delivery) -> None:
        attempts.append(d.attempt)
        raise RuntimeError("cannot handle this")

    env = new_envelope(kind="task", sender="user:t", recipient="poison", payload=b"{}")
    async with (
        DeadLetters(bus, "poison") as dlq,
        running(bus, "poison", always_fails, max_deliver=3),
    ):
        await bus.publish(env)
        letter = await dlq.next()
    assert attempts == [1, 2, 3]
    assert letter.attempts == 3
    assert letter.envelope_id == env.id and letter.run_id == env.run_id
    assert "failed 3 times" in letter.reason and "cannot handle this" in letter.reason
    assert letter.last_error is not None and letter.last_error.type == "RuntimeError"
    listed = await read_dead_letters(bus, 10)
    assert [d.envelope_id for _, d in listed] == [env.id]


async def test_retry_naks_with_delay_and_reject_dead_letters_at_once(bus: Bus) -> None:
    seen: dict[str, list[int]] = {"retry": [], "reject": []}

    async def handler(d: Delivery) -> None:
        body = msgspec.json.decode(d.envelope.payload)
        seen[body].append(d.attempt)
        if body == "retry" and d.attempt == 1:
            raise Retry("not yet", delay_s=0.3)
        if body == "reject":
            raise Reject("this task is malformed for good")

    async with DeadLetters(bus, "steer") as dlq, running(bus, "steer", handler, max_deliver=5):
        await bus.publish(
            new_envelope(kind="task", sender="s", recipient="steer", payload=b'"reject"')
        )
        letter = await dlq.next()
        await bus.publish(
            new_envelope(kind="task", sender="s", recipient="steer", payload=b'"retry"')
        )
        for _ in range(100):
            if len(seen["retry"]) == 2:
                break
            await asyncio.sleep(0.05)
    assert seen["reject"] == [1]
    assert letter.reason == "this task is malformed for good" and letter.attempts == 1
    assert seen["retry"] == [1, 2]


_GOOD_HEADERS = {"Relay-Id": "A", "Relay-Run": "A", "Relay-Kind": "task", "Relay-To": "bad"}


@pytest.mark.parametrize(
    ("headers", "data", "reason"),
    [
        ({}, b'{"x": 1}', "undecodable: not a relaybus task: it has no Relay-Id header"),
        ({**_GOOD_HEADERS, "Relay-Hop": "seven"}, b"{}", "header Relay-Hop = 'seven' is not"),
        ({**_GOOD_HEADERS, "Relay-Kind": "steal"}, b"{}", "header Relay-Kind = 'steal'"),
        ({**_GOOD_HEADERS, "Relay-Run": "a b"}, b"{}", "`run_id` = 'a b' is not a valid name"),
        ({**_GOOD_HEADERS, "Relay-Chain": "[1]"}, b"{}", "header Relay-Chain is not a chain"),
        (_GOOD_HEADERS, b"\x80" * 3000, "over the 2048-byte limit"),
    ],
    ids=["plain", "wrong-type", "kind", "bad-name", "chain", "oversize"],
)
async def test_bad_envelopes_are_dead_lettered_and_the_consumer_keeps_running(
    nats_server: NatsServer,
    prefix: str,
    tmp_path: Path,
    headers: dict[str, str],
    data: bytes,
    reason: str,
) -> None:
    settings = Settings.from_env(
        {}, nats_url=nats_server.url, prefix=prefix, max_payload_bytes=2048
    )
    from relaybus.bus import default_topology, ensure

    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.envelope.id)

    async with Bus(settings) as bus:
        await ensure(bus, default_topology(bus.subjects))
        async with DeadLetters(bus, "bad") as dlq, running(bus, "bad", handler) as consumer:
            await bus.publish_bytes(
                bus.subjects.task_admitted("bad"), data, {**headers, "Nats-Msg-Id": "raw-1"}
            )
            letter = await dlq.next()
            good = new_envelope(kind="task", sender="s", recipient="bad", payload=b"{}")
            await bus.publish(good)
            for _ in range(200):
                if handled:
                    break
                await asyncio.sleep(0.05)
        assert consumer.processed == 2
    assert reason in letter.reason
    assert letter.data == data and letter.attempts == 1
    assert handled == [good.id]


async def test_duplicate_publish_with_same_id_is_stored_once(bus: Bus) -> None:
    env = new_envelope(kind="task", sender="s", recipient="dup", payload=b"{}")
    first = await bus.publish(env)
    second = await bus.publish(env)
    assert first == second
    info = await bus.js.stream_info(bus.subjects.stream("TASKS"))
    assert info.state.messages == 1


async def test_publish_to_unsafe_subject_is_refused_before_sending(bus: Bus) -> None:
    from relaybus.bus import SubjectInvalid

    with pytest.raises(SubjectInvalid):
        await bus.publish_bytes(f"{bus.subjects.prefix}.task.*", b"x")


async def test_permission_violation_is_surfaced_not_silently_dropped(tmp_path: Path) -> None:
    conf = tmp_path / "auth.conf"
    conf.write_text(
        """
        authorization {
          users = [
            { user: limited, password: pw, permissions: { publish: { allow: ["ok.>", "_INBOX.>", "$JS.API.>"] },
                                                          subscribe: { allow: ["_INBOX.>"] } } }
          ]
        }
        """
    )
    with NatsServer(tmp_path / "store", config_file=conf) as server:
        url = server.url.replace("nats://", "nats://limited:pw@")
        async with Bus(Settings.from_env({}, nats_url=url, request_timeout_s=1)) as bus:
            with pytest.raises(PermissionViolation, match=r"denied\.subject"):
                await bus.publish_core("denied.subject", b"x", confirm_s=2.0)
            await bus.publish_core("ok.fine", b"x", confirm_s=0.2)  # allowed: no error
            with pytest.raises(PermissionViolation, match=r"denied\.other"):
                await bus.publish_bytes("denied.other", b"x")


def test_a_lease_lapses_for_good_after_a_late_heartbeat() -> None:
    lease = Lease(ack_wait_s=2.0, last_beat=100.0)
    lease.beat(100.5)  # on time
    assert not lease.lapsed
    lease.beat(102.0)  # 1.5 s without one: the server may have redelivered meanwhile
    assert lease.lapsed
    lease.beat(102.2)  # beats on time again do not take the doubt back
    assert lease.lapsed and not lease.held()


async def test_an_attempt_that_fails_after_its_lease_lapsed_neither_naks_nor_dead_letters(
    bus: Bus,
) -> None:
    # Given a last attempt that stalls past its lease, then fails: another replica may hold
    # the message now, so a nak (or a dead letter) must not come from this one
    attempts: list[int] = []

    async def stalls_then_fails(d: Delivery) -> None:
        attempts.append(d.attempt)
        if d.attempt == 1:
            d.lease.lapsed = True  # what a stall near the ack wait does to it
            raise Retry("upstream busy", delay_s=30.0)  # a nak would hold it back 30 s

    env = new_envelope(kind="task", sender="user:t", recipient="stall", payload=b"{}")
    async with (
        DeadLetters(bus, "stall") as dlq,
        running(bus, "stall", stalls_then_fails, max_deliver=1, ack_wait_s=1.0),
    ):
        await bus.publish(env)
        # Then it came back after the ack wait, and its next delivery decided: over the limit
        letter = await dlq.next()
    assert attempts == [1], attempts  # attempt 2 is over max_deliver: dead-lettered unrun
    assert letter.attempts == 1 and "did not finish" in letter.reason


async def test_a_message_that_waited_out_a_stall_in_the_socket_starts_with_its_lease_in_doubt(
    bus: Bus,
) -> None:
    # Given a consumer with an open pull request, whose process then blocks for longer than
    # its lease margin while a second task is published (by another process: here a thread)
    leases: dict[bytes, bool] = {}

    async def blocks_on_the_first(d: Delivery) -> None:
        leases[d.envelope.payload] = d.lease.held()
        if d.envelope.payload == b'"stall"':
            time.sleep(1.8)  # 2 s ack wait: past 75% of it, the server may redeliver

    def publish_during_the_stall() -> None:
        async def publish() -> None:
            await asyncio.sleep(0.4)
            async with Bus(bus.settings, name="other") as other:
                await other.publish(
                    new_envelope(kind="task", sender="user:t", recipient="frozen", payload=b'"2"')
                )

        asyncio.run(publish())

    async with running(bus, "frozen", blocks_on_the_first, concurrency=4, ack_wait_s=2.0):
        await asyncio.sleep(0.3)  # its pull request is open
        thread = threading.Thread(target=publish_during_the_stall)
        thread.start()  # publishes 0.4 s from now: the handler blocks the loop by then
        await bus.publish(
            new_envelope(kind="task", sender="user:t", recipient="frozen", payload=b'"stall"')
        )
        for _ in range(100):  # bounded: 5 s
            if b'"2"' in leases:
                break
            await asyncio.sleep(0.05)
        thread.join(5)
    # Then the second task, which reached this process during the stall, is not taken as
    # freshly leased: the server's ack wait for it ran meanwhile
    assert leases == {b'"stall"': True, b'"2"': False}, leases


async def test_a_quiet_consumer_asks_for_tasks_once_per_several_and_outlives_its_requests(
    bus: Bus,
) -> None:
    # Given a consumer of 8 slots whose pull requests expire every second (a 2 s ack wait)
    handled: list[bytes] = []

    async def handle(d: Delivery) -> None:
        handled.append(d.envelope.payload)

    requests: list[str] = []

    async def seen(msg: object) -> None:
        requests.append(msg.subject)  # type: ignore[attr-defined]

    watcher = await bus.nc.subscribe("$JS.API.CONSUMER.MSG.NEXT.>", cb=seen)
    try:
        async with running(bus, "quiet", handle, concurrency=8, ack_wait_s=2.0):
            await asyncio.sleep(0.3)
            # When 16 tasks come one at a time
            before = len(requests)
            for i in range(16):
                await bus.publish(
                    new_envelope(kind="task", sender="user:t", recipient="quiet", payload=b"%d" % i)
                )
                for _ in range(200):  # bounded: 2 s
                    if len(handled) == i + 1:
                        break
                    await asyncio.sleep(0.01)
            asked = len(requests) - before
            # and one more after its requests expired a few times over
            await asyncio.sleep(3.0)
            await bus.publish(
                new_envelope(kind="task", sender="user:t", recipient="quiet", payload=b"16")
            )
            for _ in range(200):  # bounded: 4 s
                if len(handled) == 17:
                    break
                await asyncio.sleep(0.02)
    finally:
        await watcher.unsubscribe()
    # Then every task was handled once, in order, with a request per four tasks, not one each
    assert handled == [b"%d" % i for i in range(17)], handled
    assert asked <= 5, (asked, requests)


async def test_a_consumer_cancelled_as_a_slot_frees_up_stops(bus: Bus) -> None:
    # Given an idle consumer (its loop waits for a free slot or its pull requests to end)
    async def handle(d: Delivery) -> None:
        pass

    consumer = Consumer(bus, "cancelled", handle, concurrency=4, ack_wait_s=2.0)
    task = asyncio.create_task(consumer.run(asyncio.Event()))  # no stop: only a cancel ends it
    await asyncio.sleep(0.5)
    # When it is cancelled (a crash, an embedding app) in the turn a slot frees up, as when a
    # pull request ends: on Python 3.11 `asyncio.wait_for` swallowed such a cancellation
    for _ in range(5):
        consumer._slot_free.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        if done:
            break
    # Then it stops, cancelled
    assert task.done(), "the cancelled consumer kept running"
    assert task.cancelled()
