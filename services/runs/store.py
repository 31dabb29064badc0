"""Run records in the `<prefix>_runs` bucket: what `relaybus runs` and `run show` read.
Every change goes through `state.apply`; this module only reads and CAS-writes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec

from relaybus.bus import RelayError
from relaybus.bus.kv import Bucket, RevisionConflict
from relaybus.bus.recent import Recent

from .state import (
    Cancel,
    Look,
    MarkRunning,
    OperatorChange,
    RunChange,
    RunRecord,
    StoreSignal,
    apply,
)

log = logging.getLogger("relaybus.runs")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RunRecord).decode


class NoRun(RelayError):
    """No record of that run: `relaybus runs` lists the recent ones."""


KNOWN = 4096  # records whose last seen revision this store keeps


class RunStore:
    """Reads are always fresh. A write starts from the revision this store last read or wrote
    (a run's submit, start and end are usually changed by one process), so the hot path reads
    a record once, not before every write; CAS turns a stale start into a re-read."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self._known: Recent[str, tuple[bytes, int]] = Recent(KNOWN)
        self._marking: dict[str, asyncio.Task[None]] = {}  # `running` writes under way

    def _remember(self, run_id: str, data: bytes, revision: int) -> None:
        self._known.set(run_id, (data, revision))

    async def _read(self, run_id: str) -> tuple[bytes, int] | None:
        found = await self.bucket.get(run_id)
        if found is None:
            self._known.forget(run_id)
        else:
            self._remember(run_id, *found)
        return found

    async def create(self, record: RunRecord) -> int:
        """Store a new run's record; its revision (RevisionConflict if the run exists)."""
        data = _encode(record)
        revision = await self.bucket.create(record.run_id, data)
        self._remember(record.run_id, data, revision)
        return revision

    def created_elsewhere(self, record: RunRecord, revision: int) -> None:
        """Start this run's next write from `record` at `revision`, as its submitter created
        it, without reading it: if it changed since (or the hint was wrong), the write's CAS
        fails and the record is read then."""
        if revision > 0 and self._known.get(record.run_id) is None:
            self._remember(record.run_id, _encode(record), revision)

    async def get(self, run_id: str) -> RunRecord | None:
        found = await self._read(run_id)
        return _decode(found[0]) if found else None

    async def update(self, run_id: str, change: Callable[[RunRecord], bool]) -> RunRecord:
        """CAS-update; `change` returns False to leave the record as it is. Only a fresh read
        may decide that nothing changes (a remembered revision may be stale)."""
        marking = self._marking.get(run_id)
        if marking is not None and marking is not asyncio.current_task():
            await asyncio.wait([marking])  # starts from the revision it wrote: no conflict
        found = self._known.get(run_id)
        fresh = found is None
        for _ in range(100):
            if found is None:
                found, fresh = await self._read(run_id), True
                if found is None:
                    raise NoRun(f"no run {run_id}; `relaybus runs` lists the recent ones")
            record = _decode(found[0])
            if not change(record):
                if fresh:
                    return record
                found = None
                continue
            data = _encode(record)
            try:
                self._remember(run_id, data, await self.bucket.update(run_id, data, found[1]))
                return record
            except RevisionConflict:
                self._known.forget(run_id)
                found = None
        raise RelayError(f"run record {run_id} kept changing")

    async def change(
        self, run_id: str, change: RunChange | OperatorChange, actor: str
    ) -> tuple[RunRecord, bool]:
        """Apply one change (`state.apply`) with CAS. A run published without `submit` gets its
        record when an agent first changes it; an operator's change needs an existing run.
        Returns the record and whether it changed."""
        if isinstance(change, MarkRunning):
            return await self._mark_running(run_id, actor)
        return await self._apply(run_id, change, actor)

    async def _apply(
        self, run_id: str, change: RunChange | OperatorChange, actor: str
    ) -> tuple[RunRecord, bool]:
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

    async def _mark_running(self, run_id: str, actor: str) -> tuple[RunRecord, bool]:
        """A run's line starts: the record read fresh (the task's checks need it), and
        `submitted` made `running` by a write that does not hold the task up. The run's next
        change through this store waits for that write; CAS keeps it from landing after an
        end another process wrote, and a write that fails leaves `submitted` (the end, or the
        next start, writes over it)."""
        found = await self._read(run_id)
        if found is None:  # published without submit: the record is created as it starts
            return await self._apply(run_id, MarkRunning(), actor)
        record = _decode(found[0])
        if record.status != "submitted":
            return record, False
        task = asyncio.create_task(self._write_running(run_id, actor))
        self._marking[run_id] = task
        task.add_done_callback(lambda done: self._forget_marking(run_id, done))
        record.status = "running"
        return record, True

    async def _write_running(self, run_id: str, actor: str) -> None:
        try:
            await self._apply(run_id, MarkRunning(), actor)
        except Exception as exc:  # informational: the record stays `submitted`
            log.warning("could not mark run %s running: %r", run_id, exc)

    def _forget_marking(self, run_id: str, done: asyncio.Task[None]) -> None:
        if self._marking.get(run_id) is done:
            del self._marking[run_id]

    async def drain(self) -> None:
        """Wait for the `running` writes under way (a process that stops)."""
        if self._marking:
            await asyncio.wait(list(self._marking.values()))
