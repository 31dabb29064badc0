"""Run records in the `<prefix>_runs` bucket: what `relaybus runs` and `run show` read.

Written by operators (submit, cancel, signals) and by the run authority (services/runs/service.py)
on behalf of agents, never by agents themselves; `apply` holds the transitions agents may ask
for, as pure functions of the record."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from relaybus.bus import ErrorInfo, PermissionDenied, RelayError
from relaybus.bus.kv import Bucket, RevisionConflict

RunStatus = Literal["submitted", "running", "completed", "failed", "cancelled"]
TERMINAL_RUN: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class NoRun(RelayError):
    """No record of that run: `relaybus runs` lists the recent ones."""


class Waiter(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    task_id: str


class RunRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    agent: str
    status: RunStatus = "submitted"
    submitted_by: str = ""
    started: float = 0.0
    ended: float = 0.0
    result: Any = None
    error: ErrorInfo | None = None
    steps: int = 0
    hops: int = 0
    cost: int = 0
    failures: int = 0  # attempts that failed (retried) and tasks that failed
    waits: dict[str, Waiter] = {}
    signals: dict[str, msgspec.Raw] = {}
    cancelled_tasks: list[str] = []

    def summary(self) -> dict[str, Any]:
        """The JSON `relaybus runs` and `run show` print."""
        return {
            "run_id": self.run_id,
            "agent": self.agent,
            "status": self.status,
            "result": self.result,
            "error": f"{self.error.type}: {self.error.message}" if self.error else None,
            "cost": self.cost,
            "steps": self.steps,
            "hops": self.hops,
            "failures": self.failures,
            "started": self.started,
            "ended": self.ended or None,
            "duration_s": round(self.ended - self.started, 3) if self.ended else None,
            "waiting_for": sorted(self.waits),
        }

    def pending_signals(self) -> list[str]:
        """The signals a task of this live run waits for (`ctx.wait_signal`, a budget park)
        that nobody has sent yet."""
        if self.status in TERMINAL_RUN:
            return []
        return sorted(name for name in self.waits if name not in self.signals)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RunRecord).decode


# -- what an agent may ask of its run's record (tagged on the wire) ---------------------------


class MarkRunning(msgspec.Struct, frozen=True, tag="mark_running"):
    """The run's first task started."""


class Reopen(msgspec.Struct, frozen=True, tag="reopen"):
    """A failed run's task was replayed from the dead-letter queue."""


class CountFailure(msgspec.Struct, frozen=True, tag="count_failure"):
    """An attempt or a task failed."""


class Finish(msgspec.Struct, frozen=True, kw_only=True, tag="finish"):
    """The run's line ended."""

    status: RunStatus
    result: msgspec.Raw = msgspec.Raw(b"null")
    error: ErrorInfo | None = None
    steps: int = 0
    hops: int = 0
    cost: int = 0


class RegisterWait(msgspec.Struct, frozen=True, kw_only=True, tag="register_wait"):
    """A task of the asking agent waits for signal `name`."""

    name: str
    task_id: str


class CancelTasks(msgspec.Struct, frozen=True, kw_only=True, tag="cancel_tasks"):
    """Tasks of the run that must not start or go on."""

    task_ids: list[str]


class Look(msgspec.Struct, frozen=True, tag="look"):
    """Read the record (what the runtime needs: status, cancelled tasks); changes nothing."""


RunChange = MarkRunning | Reopen | CountFailure | Finish | RegisterWait | CancelTasks | Look


def apply(record: RunRecord, change: RunChange, agent: str, now: float) -> bool:
    """Apply what `agent` asked; False if the record stays as it is. Agents never set who
    submitted a run, nor its signals: those are the operator's."""
    match change:
        case Look():
            return False
        case MarkRunning():
            if record.status != "submitted":
                return False
            record.status = "running"
        case Reopen():
            if record.status != "failed":
                return False
            record.status, record.error, record.ended = "running", None, 0.0
        case CountFailure():
            record.failures += 1
        case Finish():
            if record.status in TERMINAL_RUN or change.status not in TERMINAL_RUN:
                return False
            record.status = change.status
            record.ended = now
            raw = bytes(change.result)
            record.result = msgspec.json.decode(raw) if raw.strip() else None
            record.error = change.error
            record.steps = max(record.steps, change.steps)
            record.hops = max(record.hops, change.hops)
            record.cost = change.cost
        case RegisterWait():
            if change.name in record.signals:
                return False
            held = record.waits.get(change.name)
            if held is not None and held.agent != agent:
                raise PermissionDenied(
                    f"signal {change.name!r} of run {record.run_id} is awaited by {held.agent}; "
                    f"{agent} cannot take it over (use another signal name)"
                )
            record.waits[change.name] = Waiter(agent=agent, task_id=change.task_id)
        case CancelTasks():
            new = [t for t in change.task_ids if t not in record.cancelled_tasks]
            if not new:
                return False
            record.cancelled_tasks.extend(new)
    return True


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

    async def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        result: bytes = b"",
        error: ErrorInfo | None = None,
        steps: int = 0,
        hops: int = 0,
        cost: int = 0,
    ) -> bool:
        """Move a run to a terminal status once; returns False if it already was terminal."""
        changed = False

        def change(record: RunRecord) -> bool:
            nonlocal changed
            if record.status in TERMINAL_RUN:
                return False
            record.status = status
            record.ended = time.time()
            record.result = msgspec.json.decode(result) if result else None
            record.error = error
            record.steps = max(record.steps, steps)
            record.hops = max(record.hops, hops)
            record.cost = cost
            changed = True
            return True

        try:
            await self.update(run_id, change)
        except RelayError:  # a task published without `submit`: record the run now
            record = RunRecord(run_id=run_id, agent="", started=time.time())
            change(record)
            try:
                await self.create(record)
            except RevisionConflict:
                return await self.finish(
                    run_id, status, result=result, error=error, steps=steps, hops=hops, cost=cost
                )
        return changed

    async def change(self, run_id: str, change: RunChange, agent: str) -> tuple[RunRecord, bool]:
        """Apply one agent change with CAS; a run published without `submit` gets its record
        when it first changes. Returns the record and whether it changed."""
        changed = False

        def step(record: RunRecord) -> bool:
            nonlocal changed
            changed = apply(record, change, agent, time.time())
            return changed

        for _ in range(10):
            try:
                return await self.update(run_id, step), changed
            except NoRun:
                if isinstance(change, Look):
                    raise
                record = RunRecord(run_id=run_id, agent=agent, started=time.time())
                step(record)
                try:
                    await self.create(record)
                    return record, changed
                except RevisionConflict:
                    continue
        raise RelayError(f"run record {run_id} kept changing")

    async def count_failure(self, run_id: str) -> None:
        def bump(record: RunRecord) -> bool:
            record.failures += 1
            return True

        try:
            await self.update(run_id, bump)
        except RelayError:
            pass  # a task published without `submit` has no record until it ends

    async def recent(self, limit: int) -> list[RunRecord]:
        keys = sorted(await self.bucket.keys(), reverse=True)[:limit]  # ULIDs sort by time
        records = [await self.get(k) for k in keys]
        return [r for r in records if r is not None]

    async def waiting(self, limit: int = 500) -> list[RunRecord]:
        """Of the `limit` most recent runs, those waiting for a signal nobody has sent yet
        (what an approver is asked for), newest first."""
        return [r for r in await self.recent(limit) if r.pending_signals()]
