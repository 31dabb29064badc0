"""Run records in the `<prefix>_runs` bucket: what `relaybus runs` and `run show` read.
Every change goes through `state.apply`; this module only reads and CAS-writes."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from relaybus.bus import RelayError
from relaybus.bus.kv import Bucket, RevisionConflict

from .state import Cancel, Look, OperatorChange, RunChange, RunRecord, StoreSignal, apply

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RunRecord).decode


class NoRun(RelayError):
    """No record of that run: `relaybus runs` lists the recent ones."""


class RunStore:
    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    async def create(self, record: RunRecord) -> None:
        await self.bucket.create(record.run_id, _encode(record))

    async def get(self, run_id: str) -> RunRecord | None:
        found = await self.bucket.get(run_id)
        return _decode(found[0]) if found else None

    async def update(self, run_id: str, change: Callable[[RunRecord], bool]) -> RunRecord:
        """CAS-update; `change` returns False to leave the record as it is."""
        for _ in range(100):
            found = await self.bucket.get(run_id)
            if found is None:
                raise NoRun(f"no run {run_id}; `relaybus runs` lists the recent ones")
            record = _decode(found[0])
            if not change(record):
                return record
            try:
                await self.bucket.update(run_id, _encode(record), found[1])
                return record
            except RevisionConflict:
                continue
        raise RelayError(f"run record {run_id} kept changing")

    async def change(
        self, run_id: str, change: RunChange | OperatorChange, actor: str
    ) -> tuple[RunRecord, bool]:
        """Apply one change (`state.apply`) with CAS. A run published without `submit` gets its
        record when an agent first changes it; an operator's change needs an existing run.
        Returns the record and whether it changed."""
        changed = False

        def step(record: RunRecord) -> bool:
            nonlocal changed
            changed = apply(record, change, actor, time.time())
            return changed

        for _ in range(10):
            try:
                return await self.update(run_id, step), changed
            except NoRun:
                if isinstance(change, Look | Cancel | StoreSignal):
                    raise
                record = RunRecord(run_id=run_id, agent=actor, started=time.time())
                step(record)
                try:
                    await self.create(record)
                    return record, changed
                except RevisionConflict:
                    continue
        raise RelayError(f"run record {run_id} kept changing")

    async def recent(self, limit: int) -> list[RunRecord]:
        keys = sorted(await self.bucket.keys(), reverse=True)[:limit]  # ULIDs sort by time
        records = [await self.get(k) for k in keys]
        return [r for r in records if r is not None]

    async def waiting(self, limit: int = 500) -> list[RunRecord]:
        """Of the `limit` most recent runs, those waiting for a signal nobody has sent yet
        (what an approver is asked for), newest first."""
        return [r for r in await self.recent(limit) if r.pending_signals()]
