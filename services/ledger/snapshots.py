"""The ledger writer's snapshots, in the `<prefix>_ledger_snapshots` bucket, in chunks: a state of
any size is kept (a KV value is at most one NATS payload, and a busy ledger's state outgrows it).

Per partition P:
  P          the manifest: for the latest snapshot (and the one before, in the other slot) the
             journal sequence it is as of, its slot and chunk count, and the SHA-256 of the
             whole; the one value a reader trusts
  P.a.<n>    chunk n of the snapshot in slot a (likewise P.b.<n>)

A snapshot is written into the slot the manifest does not name, then the manifest switches to it
in one put: a writer stopped half-way leaves the previous snapshot whole. Slots are reused, so
the bucket holds at most two snapshots whatever their number. A reader that finds a chunk missing
or the digest wrong (a fenced writer still writing, a lost message) takes the snapshot before
it, and with neither whole, rebuilds from the whole journal, slower and just as right.

Ledgers before this format kept one value under P; it is still read. A release before it
cannot read a manifest: to go back to one, delete the key P first (the ledger then replays its
journal).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import zlib

import msgspec

from relaybus.bus import Bus
from relaybus.bus.kv import Bucket, RevisionConflict

log = logging.getLogger("relaybus.ledger")

_ZLIB = b"z"  # a one-value snapshot of earlier versions: zlib-compressed msgpack
_MANIFEST = b"m"  # a manifest (msgpack) follows
CHUNK_HEADROOM = 4096  # a chunk leaves this much of a payload for the message's headers
MIN_CHUNK = 16_384


class Chunks(msgspec.Struct, frozen=True):
    """One snapshot's place: its slot, how many chunks, and what they hold together."""

    seq: int
    slot: str  # "a" or "b"
    chunks: int
    size: int
    sha256: str


class Manifest(msgspec.Struct, frozen=True):
    latest: Chunks
    previous: Chunks | None = None  # in the other slot: read when the latest is not whole


class SnapshotStore:
    """One writer's snapshots of one partition. `store` calls take turns; the manifest is
    switched with compare-and-set, so of two writers racing (a fenced one still writing) one
    switches and the other learns it lost."""

    def __init__(self, bucket: Bucket, partition: str, chunk_bytes: int) -> None:
        self.bucket = bucket
        self.partition = partition
        self.chunk_bytes = max(MIN_CHUNK, chunk_bytes)
        self._turn = asyncio.Lock()

    @classmethod
    async def open(cls, bus: Bus, partition: str) -> SnapshotStore:
        bucket = await Bucket.open(bus, bus.subjects.bucket("ledger_snapshots"))
        limit = min(bus.settings.max_payload_bytes, bus.nc.max_payload or 1 << 20)
        return cls(bucket, partition, limit - CHUNK_HEADROOM)

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
        for chunks in (manifest.latest, manifest.previous):
            if chunks is not None and (packed := await self._read(chunks)) is not None:
                return zlib.decompress(packed)
        return None

    async def _read(self, chunks: Chunks) -> bytes | None:
        parts = []
        for n in range(chunks.chunks):
            chunk = await self.bucket.get(self._key(chunks.slot, n))
            if chunk is None:
                log.warning("ledger snapshot at %d lacks chunk %d; not using it", chunks.seq, n)
                return None
            parts.append(chunk[0])
        packed = b"".join(parts)
        if len(packed) != chunks.size or hashlib.sha256(packed).hexdigest() != chunks.sha256:
            log.warning(
                "ledger snapshot at %d does not match its manifest; not using it", chunks.seq
            )
            return None
        return packed

    async def store(self, seq: int, raw: bytes) -> int:
        """Keep `raw` (msgpack of the state as of journal sequence `seq`); returns its chunks,
        or 0 if another writer switched the manifest meanwhile (its snapshot stands)."""
        # ids and account names repeat: several times smaller; off the loop (zlib lets go of
        # the GIL), so the writer decides on meanwhile; level 1 takes under half level 6's CPU
        # for a few percent more bytes
        packed = await asyncio.to_thread(zlib.compress, raw, 1)
        async with self._turn:
            found = await self.bucket.get(self.partition)
            current = None
            if found is not None and found[0][:1] == _MANIFEST:
                current = msgspec.msgpack.decode(found[0][1:], type=Manifest).latest
            slot = "b" if current is not None and current.slot == "a" else "a"
            size = self.chunk_bytes
            count = max(1, -(-len(packed) // size))
            for n in range(count):
                await self.bucket.put(self._key(slot, n), packed[n * size : (n + 1) * size])
            chunks = Chunks(
                seq=seq,
                slot=slot,
                chunks=count,
                size=len(packed),
                sha256=hashlib.sha256(packed).hexdigest(),
            )
            value = _MANIFEST + msgspec.msgpack.encode(Manifest(latest=chunks, previous=current))
            try:
                if found is None:
                    await self.bucket.create(self.partition, value)
                else:
                    await self.bucket.update(self.partition, value, found[1])
            except RevisionConflict:
                log.warning("another ledger writer stored a snapshot meanwhile; keeping its own")
                return 0
            for n in range(count, count + 1024):  # what the slot held beyond (a larger one)
                key = self._key(slot, n)
                if await self.bucket.get(key) is None:
                    break
                await self.bucket.delete(key)
            return count

    def _key(self, slot: str, n: int) -> str:
        return f"{self.partition}.{slot}.{n}"
