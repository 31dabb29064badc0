"""Reading the events stream: a live (or replayed) feed of one run's or every run's events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import nats.errors
from nats.js import api

from .client import Bus
from .codec import decode_or_none
from .events import Event, event_decoder
from .position import position_of

log = logging.getLogger("relaybus.feed")
# The server removes a feed's consumer this long after its reader left (a client that crashed
# included), so watchers that come and go do not pile up against the stream's consumer limit.
INACTIVE_S = 5.0


def _event(data: bytes) -> Event | None:
    """The event in a record, or None (logged) for one that is not: anyone allowed to publish
    on the events stream can store any bytes, and no reader may stop over them."""
    event = decode_or_none(event_decoder, data)
    if event is None:
        log.warning("skipping a record on the events stream that is not an event")
    return event


class EventFeed:
    """`async with EventFeed(bus, run_id=..., replay=True) as feed: event = await feed.next(5)`.

    `replay` starts at the run's (or stream's) first event, `since` (epoch seconds) at the first
    event from then; otherwise only new events come. `kind` keeps one kind of event.
    """

    def __init__(
        self,
        bus: Bus,
        run_id: str | None = None,
        *,
        kind: str | None = None,
        replay: bool = False,
        since: float | None = None,
    ) -> None:
        self.bus = bus
        self.subject = bus.subjects.events_of(run_id)
        self.filters: list[str] = []
        if kind is not None:
            self.subject = self.subject[: -len(">")] + kind
            if run_id is None:
                self.subject = self.subject.replace(".event.", ".event.*.", 1)
            self.filters = [self.subject, f"{self.subject}.*"]  # from services, from agents
        self.replay = replay
        self.since = since
        self._sub: Any = None
        # nats-py restarts an ordered consumer that missed a beat at the stream sequence after
        # the last one it delivered: at sequence 1 when none was delivered yet. What a feed of
        # new events gets from before it began is dropped by this bound.
        self._first_seq = 0

    async def __aenter__(self) -> EventFeed:
        config = api.ConsumerConfig(filter_subjects=self.filters or None)
        if self.since is not None:
            policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.fromtimestamp(self.since, tz=UTC)
        else:
            policy = api.DeliverPolicy.ALL if self.replay else api.DeliverPolicy.NEW
        if policy is api.DeliverPolicy.NEW:
            with contextlib.suppress(nats.errors.Error):  # a connection not allowed to ask
                info = await self.bus.js.stream_info(self.bus.subjects.stream("EVENTS"))
                self._first_seq = info.state.last_seq + 1
        self._sub = await self.bus.js.subscribe(
            self.subject,
            stream=self.bus.subjects.stream("EVENTS"),  # no lookup request per feed
            ordered_consumer=True,
            deliver_policy=policy,
            config=config,
            inactive_threshold=INACTIVE_S,
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

    async def stored(self, first_timeout_s: float = 1.0) -> list[Event]:
        """Every event stored so far (with `replay=True`), without waiting for new ones."""
        return [event for event, _ in await self.stored_sourced(first_timeout_s)]

    async def stored_sourced(self, first_timeout_s: float = 1.0) -> list[tuple[Event, str]]:
        """`stored`, each event with the agent that published it ("" for services/operators)."""
        out: list[tuple[Event, str]] = []
        timeout = first_timeout_s
        while True:
            try:
                msg = await self._sub.next_msg(timeout=timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                return out
            where = position_of(msg.reply)
            event = self._checked(msg, where.sequence)
            if event is not None:
                out.append((event, self.bus.subjects.source_of(msg.subject)))
            if where.pending == 0:
                return out
            timeout = 5.0

    async def next(self, timeout_s: float) -> Event | None:
        """The next event, or None if none came within `timeout_s`."""
        found = await self.next_sourced(timeout_s)
        return found[0] if found is not None else None

    async def next_sourced(self, timeout_s: float) -> tuple[Event, str] | None:
        """The next event and the agent that published it ("" for a user, operator or
        service), or None if none came within `timeout_s`. The source comes from the
        subject, which NATS permissions tie to the publisher's own name."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await self._sub.next_msg(timeout=left)
            except (TimeoutError, nats.errors.TimeoutError):
                return None
            event = self._checked(msg, position_of(msg.reply).sequence)
            if event is not None:
                return event, self.bus.subjects.source_of(msg.subject)
        return None

    def _checked(self, msg: Any, sequence: int) -> Event | None:
        """The event, if its body names the run its subject names (an agent may publish any
        body on its own event subjects; the subject's run is what readers may rely on), and it
        was stored after a feed of new events began, or at or after `since`."""
        if sequence < self._first_seq:
            return None
        subject = msg.subject
        event = _event(msg.data)
        if event is not None and self.since is not None and event.time < self.since:
            return None
        run = subject.split(".")[len(self.bus.subjects.prefix.split(".")) + 1]
        if event is not None and event.run_id != run:
            log.warning("skipping an event for run %s published under run %s", event.run_id, run)
            return None
        return event


def from_the_run(events: list[tuple[Event, str]], entry: str) -> list[Event]:
    """The events published by the run's own agents: `entry` (the agent it was submitted to),
    then every agent one of those called or handed it to, and by services and operators. An
    agent outside the run can publish events under its own name for any run; they are left
    out."""
    holders = {entry}
    while True:
        grown = holders | {
            e.recipient
            for e, source in events
            if source in holders and e.kind in ("call", "handoff") and e.recipient
        }
        if grown == holders:
            break
        holders = grown
    return [e for e, source in events if not source or source in holders]
