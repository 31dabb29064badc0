"""A KV bucket read from memory: a watch keeps a copy of every entry, and reads that the copy
can answer cost no message. For small buckets read on every request and written rarely (the
identity registry: agents, users, revocations).

The copy answers only while it is *live*: its watch has caught up with the bucket, still runs,
and the connection has not dropped since it began (after a reconnect the watch starts again
and reads go to the server until it has caught up). A read the copy cannot answer goes to the
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


class WatchedBucket(Bucket):
    def __init__(
        self, bucket: Bucket, nc: Any, *, misses: Literal["read", "absent"] = "read"
    ) -> None:
        super().__init__(bucket._kv, bucket.name)
        self._nc = nc
        self._misses = misses
        self._copy: dict[str, Entry] = {}
        self._watch: Watch | None = None
        self._task: asyncio.Task[None] | None = None
        self._reconnects = -1
        self._starting: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WatchedBucket:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        if self._watch is not None:
            with contextlib.suppress(Exception):
                await self._watch.stop()  # ends the iteration in _follow
            self._watch = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def live(self) -> bool:
        """The copy says what the bucket holds (up to a write's delivery)."""
        return (
            self._watch is not None
            and self._watch.caught_up
            and self._task is not None
            and not self._task.done()
            and self._nc.is_connected
            and self._nc.stats["reconnects"] == self._reconnects
        )

    async def _start(self) -> None:
        if self._watch is not None:
            with contextlib.suppress(Exception):
                await self._watch.stop()
        if self._task is not None:
            self._task.cancel()
        self._reconnects = self._nc.stats["reconnects"]
        self._watch = watch = await self.watch()
        self._task = asyncio.create_task(self._follow(watch), name=f"watch {self.name}")

    async def _follow(self, watch: Watch) -> None:
        async for key, value in watch:
            self._remember(key, value, watch.revision)

    def _restart_soon(self) -> None:
        """After a reconnect (or a watch that ended), follow the bucket again, in the
        background: until it has caught up, reads go to the server."""
        if self._starting is not None and not self._starting.done():
            return
        if not self._nc.is_connected:
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

    async def get(self, key: str) -> tuple[bytes, int] | None:
        if self.live():
            held = self._copy.get(key)
            if held is not None:
                return None if held[0] is None else (held[0], held[1])
            if self._misses == "absent":
                return None
        elif self._watch is not None:
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
