"""A KV bucket read from memory: a watch keeps a copy of every entry, and reads that the copy
can answer cost no message. For small buckets read on every request and written rarely (the
identity registry: agents, users, revocations).

The copy answers only while it is *live*: its watch has caught up with the bucket, still runs,
the connection has not dropped since it began (after a reconnect the watch starts again and
reads go to the server until it has caught up), and a check every second of the stream's last
sequence against what the watch delivered confirmed the copy complete within the last three
seconds. nats-py cannot tell when its watch consumer was deleted or changed by someone else,
or its stream re-created: the check can, and such a copy stops answering within seconds. A read the copy cannot answer goes to the
server, as `Bucket.get` does. Writes through this bucket enter the copy at once, so a process
reads what it wrote; another process's write arrives with its watch (milliseconds).

An absent key is the question a cache answers worst: `misses="read"` asks the server about a
key the copy does not hold (an agent registered a moment ago by another replica), and
`misses="absent"` believes the copy (revocations: the key of a revoked thing exists, and every
unrevoked one is a miss; asking the server each time would save nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from .kv import Bucket, RevisionConflict, Watch

log = logging.getLogger("relaybus.bus.kvview")

#: an entry of the copy: its value (None: deleted) and revision
Entry = tuple[bytes | None, int]
CHECK_S = 1.0  # how often the copy is checked against the stream's last sequence
MAX_LAG_S = 3.0  # a copy not confirmed complete this recently answers nothing
CONFIRM_EVERY_S = 0.2  # how often `confirm` asks again while the watch is behind


class WatchedBucket(Bucket):
    def __init__(
        self,
        bucket: Bucket,
        nc: Any,
        *,
        misses: Literal["read", "absent"] = "read",
        check_s: float = CHECK_S,
        max_lag_s: float = MAX_LAG_S,
    ) -> None:
        super().__init__(bucket._kv, bucket.name)
        self._nc = nc
        self._misses = misses
        self._check_s, self._max_lag_s = check_s, max_lag_s
        self._copy: dict[str, Entry] = {}
        self._seen = 0  # the highest revision the watch delivered (never one written here)
        self._watch: Watch | None = None
        self._task: asyncio.Task[None] | None = None
        self._reconnects = -1
        self._started_at = 0.0  # the copy, once caught up, holds everything as of this time
        self._complete_as_of = 0.0  # ... and, confirmed by a check, as of this one
        self._starting: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> WatchedBucket:
        await self._start()
        self._checker = asyncio.create_task(self._check_loop(), name=f"check {self.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        for task in (self._checker, self._starting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._stop_watch()

    async def _stop_watch(self) -> None:
        watch, task = self._watch, self._task
        self._watch = self._task = None  # not live from here on
        if watch is not None:
            with contextlib.suppress(Exception):
                await watch.stop()  # ends the iteration in _follow
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _following(self) -> bool:
        return (
            self._watch is not None
            and self._watch.caught_up
            and self._task is not None
            and not self._task.done()
            and self._nc.is_connected
            and self._nc.stats["reconnects"] == self._reconnects
        )

    def _needs_restart(self) -> bool:
        """No watch, or one that ended, began before a reconnect, or never caught up."""
        watch, task = self._watch, self._task
        if watch is None or task is None or task.done():
            return True
        if self._nc.stats["reconnects"] != self._reconnects:
            return True
        waited = asyncio.get_running_loop().time() - self._started_at
        return not watch.caught_up and waited > self._max_lag_s

    def live(self) -> bool:
        """The copy says what the bucket holds: its watch runs and caught up, the connection
        never dropped since it began, and a check of the stream's last sequence confirmed the
        copy complete within the last `max_lag_s` (a watch consumer someone deleted or
        changed, or a stream re-created, stops delivering without telling nats-py)."""
        if not self._following():
            return False
        complete = max(self._complete_as_of, self._started_at)
        return asyncio.get_running_loop().time() - complete <= self._max_lag_s

    async def _start(self) -> None:
        await self._stop_watch()
        self._copy, self._seen = {}, 0  # from scratch: a re-created stream numbers anew
        self._complete_as_of = 0.0
        self._reconnects = self._nc.stats["reconnects"]
        self._started_at = asyncio.get_running_loop().time()
        watch = await self.watch()
        self._watch = watch
        self._task = asyncio.create_task(self._follow(watch), name=f"watch {self.name}")

    async def _follow(self, watch: Watch) -> None:
        async for key, value in watch:
            self._remember(key, value, watch.revision)
            self._seen = max(self._seen, watch.revision)

    async def _check_loop(self) -> None:
        """Every `check_s`: the stream's last sequence, against what the watch delivered. All
        of it delivered: the copy was complete when the check was asked. What the previous
        check saw delivered by now: complete as of that check. Neither for `max_lag_s`, or a
        last sequence below what was delivered (the stream was re-created): watch again."""
        loop = asyncio.get_running_loop()
        previous: tuple[int, float] | None = None
        while True:
            await asyncio.sleep(self._check_s)
            if not self._following():
                previous = None
                if self._needs_restart():
                    self._restart_soon()
                continue
            asked = loop.time()
            try:
                last = int((await self.stream_state()).last_seq)
            except Exception:
                previous = None
                continue
            if last < self._seen:
                log.warning("KV bucket %s was re-created; watching it again", self.name)
                self._restart_soon()
                previous = None
                continue
            if previous is not None and self._seen >= previous[0]:
                self._complete_as_of = max(self._complete_as_of, previous[1])
            if self._seen >= last:
                self._complete_as_of = max(self._complete_as_of, asked)
            previous = (last, asked)
            if loop.time() - max(self._complete_as_of, self._started_at) > self._max_lag_s:
                log.warning("the watch of KV bucket %s fell behind; watching it again", self.name)
                self._restart_soon()
                previous = None

    def _restart_soon(self) -> None:
        """Follow the bucket again, in the background: until the new watch has caught up,
        reads go to the server."""
        if self._closed or not self._nc.is_connected:
            return
        if self._starting is not None and not self._starting.done():
            return

        async def start() -> None:
            try:
                await self._start()
            except Exception as exc:  # the next read tries again; until then reads go direct
                log.warning("could not watch KV bucket %s again: %s", self.name, exc)

        self._starting = asyncio.create_task(start())

    def _remember(self, key: str, value: bytes | None, revision: int) -> None:
        held = self._copy.get(key)
        if held is None or held[1] < revision:
            self._copy[key] = (value, revision)

    async def confirm(self, timeout_s: float) -> bool:
        """Live now, or once the stream's last sequence (asked now, then every `CONFIRM_EVERY_S`
        for at most `timeout_s`) shows the copy complete: a check that came late (a busy
        process) is not taken for a copy that fell behind."""
        if self.live():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._following():
                asked = loop.time()
                try:
                    last = int((await self.stream_state()).last_seq)
                except Exception:
                    return False
                if last < self._seen:  # re-created: only a new watch can say what it holds
                    self._restart_soon()
                    return False
                if self._seen >= last:
                    self._complete_as_of = max(self._complete_as_of, asked)
                    return True
            if loop.time() + CONFIRM_EVERY_S > deadline:
                return self.live()
            await asyncio.sleep(CONFIRM_EVERY_S)

    async def wait_live(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until the first watch has caught up; whether it is live."""
        if self._watch is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._watch.caught_up_event.wait()
        return self.live()

    def holds(self, key: str) -> bool:
        """Whether the copy holds a value under `key` (ask only while `live()`)."""
        held = self._copy.get(key)
        return held is not None and held[0] is not None

    async def get(self, key: str) -> tuple[bytes, int] | None:
        if self.live():
            held = self._copy.get(key)
            if held is not None:
                return None if held[0] is None else (held[0], held[1])
            if self._misses == "absent":
                return None
        elif self._needs_restart():
            self._restart_soon()
        return await self.get_current(key)

    async def get_current(self, key: str) -> tuple[bytes, int] | None:
        found = await Bucket.get(self, key)
        if found is not None:
            self._remember(key, found[0], found[1])
        return found

    async def create(self, key: str, value: bytes) -> int:
        try:
            revision = await super().create(key, value)
        except RevisionConflict:
            self._copy.pop(key, None)  # read it from the server next time
            raise
        self._remember(key, value, revision)
        return revision

    async def update(self, key: str, value: bytes, revision: int) -> int:
        try:
            written = await super().update(key, value, revision)
        except RevisionConflict:
            self._copy.pop(key, None)
            raise
        self._remember(key, value, written)
        return written

    async def put(self, key: str, value: bytes) -> int:
        revision = await super().put(key, value)
        self._remember(key, value, revision)
        return revision

    async def delete(self, key: str) -> None:
        await super().delete(key)
        self._copy.pop(key, None)  # the delete's revision is unknown here: ask the server
