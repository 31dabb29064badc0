"""The consume loop against a real server: retries, dead letters, bad envelopes, dedupe."""

from __future__ import annotations

import asyncio
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
from relaybus.bus.consumer import Lease
from relaybus.bus.events import DeadLetter, dead_letter_decoder


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
