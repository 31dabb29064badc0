"""JetStream KV with compare-and-set, wrapped so that nothing above `bus` touches nats-py."""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from .client import Bus
from .errors import ConnectionFailed, RelayError


class RevisionConflict(RelayError):
    """A compare-and-set write lost: the key changed since it was read (or already exists)."""


class Bucket:
    """One KV bucket. `get` returns (value, revision); writes are conditional on a revision."""

    def __init__(self, kv: KeyValue, name: str) -> None:
        self._kv = kv
        self.name = name

    @classmethod
    async def open(cls, bus: Bus, name: str) -> Bucket:
        try:
            return cls(await bus.js.key_value(name), name)
        except nats.js.errors.BucketNotFoundError:
            raise ConnectionFailed(f"KV bucket {name} does not exist; run `relaybus up`") from None

    async def get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # also covers deleted keys
            return None
        if entry.value is None:
            return None
        return bytes(entry.value), int(entry.revision or 0)

    async def create(self, key: str, value: bytes) -> int:
        """Write only if `key` does not exist; RevisionConflict otherwise."""
        try:
            return int(await self._kv.create(key, value))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise RevisionConflict(f"{self.name}/{key} already exists") from None

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write only if `key` is still at `revision`; RevisionConflict otherwise."""
        try:
            return int(await self._kv.update(key, value, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise RevisionConflict(f"{self.name}/{key} changed since revision {revision}") from None

    async def put(self, key: str, value: bytes) -> int:
        return int(await self._kv.put(key, value))

    async def delete(self, key: str) -> None:
        await self._kv.delete(key)

    async def keys(self) -> list[str]:
        try:
            return list(await self._kv.keys())
        except nats.js.errors.NoKeysError:
            return []
        except nats.errors.TimeoutError:
            return []

    async def watch(self) -> Watch:
        """Every current entry, then live changes: `async for key, value in watch` (value None
        when deleted). `watch.live` turns False when the connection is lost."""
        watcher = await self._kv.watchall()
        return Watch(watcher)


class Watch:
    def __init__(self, watcher: Any) -> None:
        self._watcher = watcher

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> tuple[str, bytes | None]:
        while True:
            try:
                entry = await self._watcher.updates(timeout=3600)
            except nats.errors.TimeoutError:
                continue
            if entry is None:  # the initial values are done
                continue
            value = None if entry.operation in ("DEL", "PURGE") else bytes(entry.value or b"")
            return str(entry.key), value

    async def stop(self) -> None:
        await self._watcher.stop()
