"""Requests and stream publishes through the connection's own reply inbox (bus/replies.py):
each caller gets its own reply (its own message's sequence), duplicates are stored once, and
every failure is the one nats-py's `request` and `js.publish` raise, so the retries and
conflicts above them behave as before."""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from relaybus.bus import Bus, ConnectionFailed, ServiceUnavailable, default_topology, ensure
from relaybus.bus.kv import Bucket, RevisionConflict
from relaybus.bus.replies import Replies


async def _ignore(msg: object) -> None:
    """A listener that never answers."""


async def _stream(bus: Bus, name: str) -> str:
    subject = f"{bus.subjects.prefix}-{name}"
    await bus.js.add_stream(name=f"{bus.subjects.prefix}_{name}".upper(), subjects=[f"{subject}.>"])
    return subject


async def test_concurrent_publishes_each_get_their_own_sequence(bus: Bus) -> None:
    subject = await _stream(bus, "acks")
    bodies = [f"m{i}".encode() for i in range(300)]
    seqs = await asyncio.gather(
        *(bus.publish_bytes(f"{subject}.{i}", b) for i, b in enumerate(bodies))
    )
    assert sorted(seqs) == list(range(1, 301))  # none lost, none answered twice
    for i in (0, 137, 299):  # and each caller's sequence is its own message's
        stored = await bus.js.get_msg(f"{bus.subjects.prefix}_ACKS".upper(), seqs[i])
        assert stored.data == bodies[i]


async def test_a_duplicate_message_id_is_stored_once_and_answers_the_first_sequence(
    bus: Bus,
) -> None:
    subject = await _stream(bus, "dup")
    first = await bus.publish_bytes(f"{subject}.a", b"one", {"Nats-Msg-Id": "same"})
    again = await bus.publish_bytes(f"{subject}.a", b"two", {"Nats-Msg-Id": "same"})
    assert again == first
    info = await bus.js.stream_info(f"{bus.subjects.prefix}_DUP".upper())
    assert info.state.messages == 1


async def test_failures_are_the_ones_nats_py_raises(bus: Bus) -> None:
    acks = Replies(bus.nc, timeout_s=0.5)
    subject = await _stream(bus, "errs")
    # no stream takes the subject and nobody listens: no responders
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await acks.publish(f"{bus.subjects.prefix}-nowhere.x", b"x")
    # a stream refuses: its own error, with its code
    await acks.publish(f"{subject}.k", b"1")
    with pytest.raises(nats.js.errors.BadRequestError) as refused:
        await acks.publish(f"{subject}.k", b"2", {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: "99"})
    assert refused.value.err_code == 10071
    # someone listens but never answers: a timeout, at the timeout
    await bus.nc.subscribe(f"{bus.subjects.prefix}-silent.>", cb=_ignore)
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await acks.publish(f"{bus.subjects.prefix}-silent.x", b"x")
    assert 0.4 < time.monotonic() - started < 3.0
    assert not acks._waiting  # nothing left behind by the failures


async def test_an_answer_that_is_not_an_acknowledgement_is_an_error(bus: Bus) -> None:
    async def liar(msg: nats.aio.msg.Msg) -> None:
        await bus.nc.publish(msg.reply, b"<html>not json</html>")

    await bus.nc.subscribe(f"{bus.subjects.prefix}-liar.>", cb=liar)
    with pytest.raises(nats.js.errors.APIError, match="unexpected reply"):
        await Replies(bus.nc, 2.0).publish(f"{bus.subjects.prefix}-liar.x", b"x")


async def test_a_publish_waiting_when_the_bus_closes_fails_then(bus: Bus) -> None:
    await bus.nc.subscribe(f"{bus.subjects.prefix}-silent.>", cb=_ignore)
    waiting = asyncio.create_task(bus.replies.publish(f"{bus.subjects.prefix}-silent.x", b"x"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await bus.close()
    with pytest.raises((nats.errors.ConnectionClosedError, nats.errors.TimeoutError)):
        await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - started < 10


async def test_compare_and_set_writes_keep_their_meaning(bus: Bus) -> None:
    await ensure(bus, default_topology(bus.subjects))
    bucket = await Bucket.open(bus, bus.subjects.bucket("runs"))
    first = await bucket.create("k1", b"a")
    with pytest.raises(RevisionConflict, match="already exists"):
        await bucket.create("k1", b"b")
    second = await bucket.update("k1", b"c", first)
    assert second > first
    with pytest.raises(RevisionConflict, match="changed since revision"):
        await bucket.update("k1", b"d", first)  # stale
    assert await bucket.get("k1") == (b"c", second)
    await bucket.delete("k1")
    again = await bucket.create("k1", b"e")  # over the delete's tombstone
    assert await bucket.get("k1") == (b"e", again)
    await bucket.delete("k1")
    assert await bucket.get("k1") is None  # a delete marker is no value
    assert await bucket.get("never-written") is None
    await bucket.put("k2", b"")
    assert await bucket.get("k2") is None  # an empty value reads as none, as through nats-py
    with pytest.raises(Exception, match="not allowed"):
        await bucket.update("bad..key", b"x", 1)


async def test_concurrent_requests_each_get_their_own_reply(bus: Bus) -> None:
    subject = f"{bus.subjects.prefix}.svc.echo"

    async def echo(msg: nats.aio.msg.Msg) -> None:
        await asyncio.sleep(0.001 * (int(msg.data) % 7))  # answered out of order
        await bus.nc.publish(msg.reply, b"re:" + msg.data)

    await bus.nc.subscribe(subject, cb=echo)
    replies = await asyncio.gather(*(bus.request(subject, str(i).encode()) for i in range(200)))
    assert replies == [f"re:{i}".encode() for i in range(200)]
    with pytest.raises(ServiceUnavailable, match="no service answers"):
        await bus.request(f"{bus.subjects.prefix}.svc.nobody", b"{}")
    await bus.nc.subscribe(f"{bus.subjects.prefix}.svc.mute", cb=_ignore)
    with pytest.raises(ConnectionFailed, match="no reply"):
        await bus.request(f"{bus.subjects.prefix}.svc.mute", b"{}", timeout_s=0.3)
    assert not bus.replies._waiting
