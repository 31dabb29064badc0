"""The ledger writer's snapshots, in the `<prefix>_ledger_snapshots` bucket, in chunks: a state of
any size is kept (a KV value is at most one NATS payload, and a busy ledger's state outgrows it).

Per partition P:
  P          the manifest: the journal sequence the state is as of, how many chunks, in which
             of two slots, and the SHA-256 of the whole; the one value a reader trusts
  P.a.<n>    chunk n of the snapshot in slot a (likewise P.b.<n>)

A snapshot is written into the slot the manifest does not name, then the manifest switches to it
in one put: a writer stopped half-way leaves the previous snapshot whole. Slots are reused, so
the bucket holds at most two snapshots whatever their number. A reader that finds a chunk missing
or the digest wrong (a fenced writer still writing, a lost message) has no snapshot: the writer
rebuilds from the whole journal instead, slower and just as right.
"""

from __future__ import annotations

import hashlib
import logging
import zlib

import msgspec

from relaybus.bus import Bus
from relaybus.bus.kv import Bucket

log = logging.getLogger("relaybus.ledger")

_ZLIB = b"z"  # a one-value snapshot of earlier versions: zlib-compressed msgpack
_MANIFEST = b"m"  # a manifest (msgpack) follows
CHUNK_HEADROOM = 4096  # a chunk leaves this much of a payload for the message's headers
MIN_CHUNK = 16_384


class Manifest(msgspec.Struct, frozen=True):
    seq: int
    slot: str  # "a" or "b"
    chunks: int
    size: int
    sha256: str


class SnapshotStore:
    def __init__(self, bucket: Bucket, partition: str, chunk_bytes: int) -> None:
        self.bucket = bucket
        self.partition = partition
        self.chunk_bytes = max(MIN_CHUNK, chunk_bytes)

    @classmethod
    async def open(cls, bus: Bus, partition: str) -> SnapshotStore:
        bucket = await Bucket.open(bus, bus.subjects.bucket("ledger_snapshots"))
        return cls(bucket, partition, bus.settings.max_payload_bytes - CHUNK_HEADROOM)

    async def load(self) -> bytes | None:
        """The latest whole snapshot (msgpack), or None: rebuild from the journal."""
        found = await self.bucket.get(self.partition)
        if found is None:
            return None
        value = found[0]
        if value[:1] == _ZLIB:
            return zlib.decompress(value[1:])
        if value[:1] != _MANIFEST:
            return value  # the plain msgpack of the first versions
        manifest = msgspec.msgpack.decode(value[1:], type=Manifest)
        parts = []
        for n in range(manifest.chunks):
            chunk = await self.bucket.get(self._key(manifest.slot, n))
            if chunk is None:
                log.warning("ledger snapshot chunk %d is missing; replaying the journal", n)
                return None
            parts.append(chunk[0])
        packed = b"".join(parts)
        if len(packed) != manifest.size or hashlib.sha256(packed).hexdigest() != manifest.sha256:
            log.warning("ledger snapshot does not match its manifest; replaying the journal")
            return None
        return zlib.decompress(packed)

    async def store(self, seq: int, raw: bytes) -> int:
        """Keep `raw` (msgpack of the state as of journal sequence `seq`); returns its chunks."""
        packed = zlib.compress(raw, 6)  # ids and account names repeat: ~6x smaller
        found = await self.bucket.get(self.partition)
        current = None
        if found is not None and found[0][:1] == _MANIFEST:
            current = msgspec.msgpack.decode(found[0][1:], type=Manifest)
        slot = "b" if current is not None and current.slot == "a" else "a"
        size = self.chunk_bytes
        chunks = max(1, -(-len(packed) // size))
        for n in range(chunks):
            await self.bucket.put(self._key(slot, n), packed[n * size : (n + 1) * size])
        manifest = Manifest(
            seq=seq,
            slot=slot,
            chunks=chunks,
            size=len(packed),
            sha256=hashlib.sha256(packed).hexdigest(),
        )
        await self.bucket.put(self.partition, _MANIFEST + msgspec.msgpack.encode(manifest))
        for n in range(chunks, chunks + 1024):  # what the slot held beyond (a larger snapshot)
            key = self._key(slot, n)
            if await self.bucket.get(key) is None:
                break
            await self.bucket.delete(key)
        return chunks

    def _key(self, slot: str, n: int) -> str:
        return f"{self.partition}.{slot}.{n}"
