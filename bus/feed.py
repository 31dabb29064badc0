"""Reading the events stream: a live (or replayed) feed of one run's or every run's events."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import nats.errors
from nats.js import api

from .client import Bus
from .events import Event, event_decoder


class EventFeed:
    """`async with EventFeed(bus, run_id=..., replay=True) as feed: event = await feed.next(5)`.

    `replay` starts at the run's (or stream's) first event; otherwise only new events come.
    """

    def __init__(self, bus: Bus, run_id: str | None = None, *, replay: bool = False) -> None:
        self.bus = bus
        self.subject = bus.subjects.events_of(run_id)
        self.replay = replay
        self._sub: Any = None

    async def __aenter__(self) -> EventFeed:
        policy = api.DeliverPolicy.ALL if self.replay else api.DeliverPolicy.NEW
        self._sub = await self.bus.js.subscribe(
            self.subject, ordered_consumer=True, deliver_policy=policy
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def next(self, timeout_s: float) -> Event | None:
        """The next event, or None if none came within `timeout_s`."""
        if timeout_s <= 0:
            return None
        try:
            msg = await self._sub.next_msg(timeout=timeout_s)
        except (TimeoutError, nats.errors.TimeoutError):
            return None
        return event_decoder.decode(msg.data)
