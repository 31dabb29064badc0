"""A task's `started` event, held back while the task is quick.

A task's `started` goes out when the task first does anything else a watcher sees (a step, a
call, a suspend, a retry, …) or once it has run for `STARTED_AFTER_S`, whichever comes first,
stamped with the time it really started. A task whose attempt ends before either publishes no
`started`: its end event (`completed`, `failed`, `cancelled` or, for a child, `returned`)
carries the attempt and the queue time instead, as Temporal records an activity's start with
its completion. One NATS message less per quick task, and one wake-up less for every watcher
and waiting client; views read an end event with `attempt` set as "started, then ended"."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from relaybus.bus import Event

log = logging.getLogger("relaybus.worker")

#: How long a running task's `started` waits for the task to end (or to show anything else).
STARTED_AFTER_S = 0.25
#: The end events that carry a held start instead of following it.
FOLDS: frozenset[str] = frozenset({"completed", "failed", "cancelled", "returned"})


class _Held:
    __slots__ = ("event", "sending", "timer")

    def __init__(self, event: Event, timer: asyncio.TimerHandle) -> None:
        self.event, self.timer = event, timer
        self.sending: asyncio.Future[None] | None = None


class HeldStarts:
    """The `started` events of this process's running tasks that have not gone out yet, by
    task id. `publish` sends one event."""

    def __init__(
        self, publish: Callable[[Event], Awaitable[None]], after_s: float = STARTED_AFTER_S
    ) -> None:
        self._publish = publish
        self.after_s = after_s
        self._held: dict[str, _Held] = {}
        self._loose: set[asyncio.Future[None]] = set()  # `publish_later`'s, until they are out

    def hold(self, started: Event) -> bool:
        """Hold `started` until its task shows anything else or runs `after_s`. False if a
        start of the same task id is already held here (a duplicate delivery running beside
        it): the caller publishes this one at once."""
        task = started.envelope_id
        if not task or task in self._held:
            return False
        timer = asyncio.get_running_loop().call_later(self.after_s, self.send, task)
        self._held[task] = _Held(started, timer)
        return True

    def send(self, task: str) -> None:
        """Publish the held start of `task` now (a no-op if there is none or it is going)."""
        held = self._held.get(task)
        if held is None or held.sending is not None:
            return
        held.timer.cancel()
        held.sending = asyncio.ensure_future(self._send(task, held))

    async def before(self, task: str, kind: str) -> Event | None:
        """Called before any other event of `task` goes out. For an end event (FOLDS) of a task
        whose start is still held: that start, which the end event is to carry (it will never
        be published). Otherwise None, once a held start has gone out ahead of the event."""
        held = self._held.get(task)
        if held is None:
            return None
        if held.sending is None and kind in FOLDS:
            held.timer.cancel()
            del self._held[task]
            return held.event
        await self.out(task)
        return None

    async def out(self, task: str) -> None:
        """Publish the held start of `task` now, if there is one, and wait until it is out."""
        self.send(task)
        held = self._held.get(task)
        if held is not None and held.sending is not None:
            await asyncio.shield(held.sending)

    def publish_later(self, started: Event) -> None:
        """Publish `started` (no longer held) in a task of its own, kept until it is out."""
        sending = asyncio.ensure_future(self._publish_quietly(started))
        self._loose.add(sending)
        sending.add_done_callback(self._loose.discard)

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Publish what is still held (tasks cut short by a shutdown did start) and wait, at
        most `timeout_s`, for it to go out."""
        for task in list(self._held):
            self.send(task)
        sending = [held.sending for held in self._held.values() if held.sending is not None]
        sending += self._loose
        if sending:
            await asyncio.wait(sending, timeout=timeout_s)

    async def _send(self, task: str, held: _Held) -> None:
        try:
            await self._publish_quietly(held.event)
        finally:
            if self._held.get(task) is held:
                del self._held[task]

    async def _publish_quietly(self, started: Event) -> None:
        try:
            await self._publish(started)
        except Exception as exc:  # progress, not state: the task goes on without it
            log.warning(
                "could not publish the started event of task %s: %s", started.envelope_id, exc
            )

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, task: object) -> bool:
        return task in self._held
