"""A plain pull loop over one durable consumer, for messages that are not envelopes (the
ingress's plain tasks): the handler acks, naks or terminates each message itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from .client import Bus
from .streams import ConsumerSpec, ensure_consumer_ready

BATCH = 32


class PlainMessage:
    """One message as stored: subject, headers, body and stream sequence, with its acks."""

    __slots__ = ("_msg", "data", "headers", "sequence", "subject")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.subject = msg.subject
        self.headers: dict[str, str] = dict(msg.headers or {})
        self.data = msg.data
        self.sequence = int(msg.metadata.sequence.stream)

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay_s: float) -> None:
        await self._msg.nak(delay=delay_s)

    async def term(self) -> None:
        await self._msg.term()


async def pull(
    bus: Bus,
    spec: ConsumerSpec,
    handle: Callable[[PlainMessage], Awaitable[None]],
    stop: asyncio.Event,
) -> None:
    """Fetch from `spec`'s consumer until `stop` is set, handling each batch concurrently."""
    await ensure_consumer_ready(bus, spec)
    sub = await bus.js.pull_subscribe_bind(spec.durable, spec.stream)
    try:
        while not stop.is_set():
            try:
                batch = await sub.fetch(BATCH, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError, nats.js.errors.FetchTimeoutError):
                continue
            await asyncio.gather(*(handle(PlainMessage(msg)) for msg in batch))
    finally:
        await sub.unsubscribe()
