"""A JetStream message's position read from its ack subject (bus/position.py) says what
nats-py's `Msg.metadata` says: for messages a real server delivers (first and redelivered),
for the domain form, and refuses anything else as not a JetStream message."""

from __future__ import annotations

import random

import nats.errors
import pytest
from nats.aio.msg import Msg

from relaybus.bus import Bus
from relaybus.bus.position import position_of


def _nats_py(reply: str) -> tuple[str, int, int, int]:
    meta = Msg.Metadata._from_reply(reply)
    return meta.stream, meta.sequence.stream, meta.num_delivered, meta.num_pending


async def test_positions_of_delivered_and_redelivered_messages_match_nats_py(bus: Bus) -> None:
    stream = f"{bus.subjects.prefix}_POS".upper()
    subject = f"{bus.subjects.prefix}-pos"
    await bus.js.add_stream(name=stream, subjects=[f"{subject}.>"])
    for i in range(12):
        await bus.js.publish(f"{subject}.{i}", b"x")
    sub = await bus.js.pull_subscribe(f"{subject}.>", durable="pos", stream=stream)
    seen = []
    first = await sub.fetch(12, timeout=5)
    for msg in first[:5]:
        await msg.nak()  # delivered again below, with a higher count
    for msg in first[5:]:
        await msg.ack()
    again = await sub.fetch(5, timeout=5)
    for msg in [*first, *again]:
        assert msg.reply
        seen.append(position_of(msg.reply))
        assert tuple(position_of(msg.reply)) == _nats_py(msg.reply)
    assert [p.sequence for p in seen[:12]] == list(range(1, 13))
    assert {p.delivered for p in seen[12:]} == {2}
    assert seen[0].stream == stream
    assert seen[11].pending == 0 and seen[0].pending == 11


def test_the_domain_form_and_random_positions_match_nats_py() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        stream = rng.choice(["S", "RELAY_TASKS", "KV_x-y"])
        fields = [str(rng.randrange(0, 10 ** rng.randrange(1, 19))) for _ in range(5)]
        delivered, sseq, cseq, ns, pending = fields
        v1 = f"$JS.ACK.{stream}.c.{delivered}.{sseq}.{cseq}.{ns}.{pending}"
        v2 = f"$JS.ACK.{rng.choice(['_', 'hub'])}.ACCHASH.{stream}.c.{delivered}.{sseq}.{cseq}.{ns}.{pending}"
        for reply in (v1, v2, v2 + ".tok", v2 + ".tok.more"):
            assert tuple(position_of(reply)) == _nats_py(reply)


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "_INBOX.abc",
        "$JS.ACK.S.c.1.2.3",  # too short
        "$JS.ACK.S.c.1.2.3.4.5.6",  # ten tokens: neither form
        "$JS.ACK.S.c.x.2.3.4.5",  # not a number
        "$JS.NAK.S.c.1.2.3.4.5",
        "$JS.ACK.S.c.1.2.x.4.5",  # a consumer sequence that is not a number
        "$JS.ACK.S.c.1.2.3.99999999999999999999999999.5",  # a time past the year 9999
    ],
)
def test_anything_else_is_refused_as_not_a_jetstream_message(reply: str | None) -> None:
    with pytest.raises(nats.errors.NotJSMessageError):
        position_of(reply)


def test_each_field_is_read_from_its_own_token() -> None:
    # the count decides retries and dead letters: a wrong field would retry forever or never
    where = position_of("$JS.ACK.RELAY_TASKS.agent_x.3.41.17.1796640707304983528.0")
    assert where == ("RELAY_TASKS", 41, 3, 0)
