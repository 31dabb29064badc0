"""The partitioned ledger at the trust boundary: a part sent where it does not belong, a forged
share or undo, and what a capture's reply may tell an agent. Each refusal names what to do; a
forged share is audited."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relaybus.bus import Bus, PermissionDenied, Settings, rpc
from relaybus.services.identity.client import read_audit
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import LedgerError
from relaybus.services.ledger.ops import Hold, Void
from relaybus.services.ledger.service import LedgerWriter

from ..ledger.test_partitions import PARTITIONS, Writers, answering, named


@pytest.fixture
async def partitioned(bus: Bus, settings: Settings) -> AsyncIterator[LedgerClient]:
    """A ledger of two partitions, a writer process each, and a client routing to them."""
    started = Writers(settings, PARTITIONS)
    try:
        for i in range(PARTITIONS):
            started.start(f"p{i}")
        client = LedgerClient(bus, partitions=PARTITIONS)
        await answering(client)
        yield client
    finally:
        started.stop()


async def test_a_part_sent_to_the_wrong_partition_or_a_forged_share_is_refused(
    bus: Bus, partitioned: LedgerClient
) -> None:
    user0, user1 = named("user:w", "p0"), named("user:w", "p1")
    p1 = bus.subjects.service_at("ledger", "hold", "p1")
    # a level another partition owns: refused, naming where it belongs
    body = {"id": "m1", "payer": user0, "payee": "tool:x", "amount": 1}
    with pytest.raises(LedgerError, match=f"{user0!r} belongs to ledger partition p0"):
        await rpc.call(bus, p1, {**body, "levels": [user1]})  # its payer's home is p0
    with pytest.raises(LedgerError, match=f"{user0!r} belongs to ledger partition p0"):
        await rpc.call(bus, p1, {**body, "levels": [user0], "share": "p0"})
    # a share that names itself its home: refused and audited
    with pytest.raises(PermissionDenied, match="claims to be a share"):
        await rpc.call(bus, p1, {**body, "levels": [user1], "share": "p1"})
    denials = await read_audit(bus, "ledger", decision="deny")
    assert any("claims to be a share" in record.reason for record in denials)
    # and nothing was placed
    assert await partitioned.query("holds") == []


async def test_an_unpartitioned_ledger_refuses_shares(bus: Bus) -> None:
    writer = LedgerWriter(bus, partitions=1)
    await writer.rebuild()
    with pytest.raises(PermissionDenied, match="only a partitioned ledger's client"):
        await writer.write(
            Hold(id="f1", payer="user:a", payee="tool:x", amount=5, levels=["user:a"], share="p1")
        )
    with pytest.raises(PermissionDenied, match="only a partitioned ledger's client"):
        await writer.write(Hold(id="f2", payer="user:a", payee="tool:x", amount=5, shares=["p1"]))
    # nor may a void there free a hold's id for placing again
    await writer.write(Hold(id="f3", payer="user:a", payee="tool:x", amount=5))
    with pytest.raises(PermissionDenied, match="this ledger splits none"):
        await writer.write(Void(id="u1", transfer="f3", undo=True))
    assert list(writer.state.holds) == ["f3"] and writer.state.holds["f3"].state == "held"


def test_a_capture_tells_its_run_s_spend_and_no_other_level_s() -> None:
    from relaybus.services.ledger.model import State, apply, decide
    from relaybus.services.ledger.ops import Capture, Hold

    state = State()
    for i, amount in enumerate((3, 4)):
        hold = Hold(
            id=f"h{i}", payer="user:bob", payee="t", amount=amount, levels=["user:bob", "run:R"]
        )
        apply(state, decide(state, hold, 1.0))  # type: ignore[arg-type]
    first = apply(state, decide(state, Capture(id="c0", transfer="h0", amount=3), 2.0))  # type: ignore[arg-type]
    second = apply(state, decide(state, Capture(id="c1", transfer="h1", amount=4), 3.0))  # type: ignore[arg-type]
    # the run's spend after each capture, and the captures' order; never bob's own level
    assert first["levels"] == {"run:R": {"spent": 3, "after": 2}}
    assert second["levels"] == {"run:R": {"spent": 7, "after": 3}}
