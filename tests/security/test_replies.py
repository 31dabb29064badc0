"""The connection's reply inbox (bus/replies.py) against a party on the bus: whoever answered
one of its requests, or shares its NATS user, learns the inbox; it must still not be able to
plant the answer to another request (a forged journal read, or a PubAck for a write that was
never stored)."""

from __future__ import annotations

import asyncio

import nats

from relaybus.bus import Bus


async def test_a_responder_cannot_plant_the_answer_to_a_later_request(bus: Bus) -> None:
    """Whoever answered one request knows this connection's reply inbox; the next request's
    reply subject must still be unguessable, or a service could forge another's answer (a
    journal read, a PubAck)."""
    seen: list[str] = []

    async def evil(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.reply)
        await bus.nc.publish(msg.reply, b"evil")

    async def genuine(msg: nats.aio.msg.Msg) -> None:
        await asyncio.sleep(0.3)  # slow: the forgeries land first
        await bus.nc.publish(msg.reply, b"genuine")

    await bus.nc.subscribe(f"{bus.subjects.prefix}.svc.evil", cb=evil)
    await bus.nc.subscribe(f"{bus.subjects.prefix}.svc.genuine", cb=genuine)
    assert await bus.request(f"{bus.subjects.prefix}.svc.evil", b"{}") == b"evil"
    inbox, _, token = seen[0].rpartition(".")
    guesses = [f"{inbox}.{token}{c}" for c in "0123456789"]
    if token.isdigit():
        guesses += [f"{inbox}.{int(token) + i}" for i in range(1, 4)]

    async def plant() -> None:
        for _ in range(20):  # bounded: 0.2 s of forgeries
            for guess in guesses:
                await bus.nc.publish(guess, b"FORGED")
            await asyncio.sleep(0.01)

    planting = asyncio.create_task(plant())
    answer = await bus.request(f"{bus.subjects.prefix}.svc.genuine", b"{}")
    await planting
    assert answer == b"genuine"
