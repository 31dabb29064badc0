"""The run state machine: a run's statuses, its record, and every change to it as a pure
function of the record (`apply`), as the ledger's decide/apply.

Records live in the `<prefix>_runs` bucket (store.py does the I/O). Agents ask the run
authority for `RunChange`s (service.py checks the chain first); operators and the run's user
make the `OperatorChange`s. A task's own status is the journal's (agents/journal.py); how a
waiting caller sees the end is `RunOutcome` (agents/submit.py), one of `ENDED` or `timeout`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from relaybus.bus import ErrorInfo, PermissionDenied, RelayError

RunStatus = Literal["submitted", "running", "completed", "failed", "cancelled"]
#: The statuses a run ends in; the run's last event is named after its status
#: (`<prefix>.event.<run>.completed` …), so waiters and records agree on how a run ended.
ENDED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


#: What the events of a run (`<prefix>.event.<run>.<kind>[.<agent>]`) say happened.
EventKind = Literal[
    "submitted",
    "started",
    "step",
    "handoff",
    "call",
    "suspended",
    "resumed",
    "retried",
    "completed",
    "failed",
    "cancelled",
    "dead_lettered",
    "signal",
    "denied",
    "parked",
    "queued",
    "degraded",
    "returned",
    "llm",
    "evaluated",
    "alert",
]


class Waiter(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    task_id: str


#: The header a submitted root task carries its run record's revision in (a hint: the worker
#: ends the run from it without reading the record; a stale or wrong one is a CAS conflict).
RUN_REVISION_HEADER = "Relaybus-Run-Revision"


def submitted_record(run_id: str, agent: str, sender: str, started: float) -> RunRecord:
    """A new run's record, as `submit` creates it (and a worker can rebuild it from the task)."""
    return RunRecord(run_id=run_id, agent=agent, submitted_by=sender, started=started)


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
            "traceback": self.error.traceback or None if self.error else None,
            "cost": self.cost,
            "steps": self.steps,
            "hops": self.hops,
            "failures": self.failures,
            "started": self.started,
            "ended": self.ended or None,
            "duration_s": round(self.ended - self.started, 3) if self.ended else None,
            "waiting_for": self.pending_signals(),
        }

    def pending_signals(self) -> list[str]:
        """The signals a task of this live run waits for (`ctx.wait_signal`, a budget park)
        that nobody has sent yet."""
        if self.status in ENDED:
            return []
        return sorted(name for name in self.waits if name not in self.signals)


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


#: What an agent may ask (the run authority decodes only these from agents).
RunChange = MarkRunning | Reopen | CountFailure | Finish | RegisterWait | CancelTasks | Look


# -- what only an operator or the run's user does (never decoded from an agent) ----------------


class Cancel(msgspec.Struct, frozen=True, kw_only=True, tag="cancel"):
    reason: str


class StoreSignal(msgspec.Struct, frozen=True, kw_only=True, tag="store_signal"):
    """Keep signal `name` (e.g. an approval) until the task waiting for it takes it."""

    name: str
    data: msgspec.Raw


OperatorChange = Cancel | StoreSignal


def apply(record: RunRecord, change: RunChange | OperatorChange, actor: str, now: float) -> bool:
    """Apply `change` as `actor` asked it (an agent's name, or "operator"); False if the record
    stays as it is. The one place run records change: agents never set who submitted a run,
    nor its signals (the authority decodes only `RunChange` from them)."""
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
            if record.status in ENDED or change.status not in ENDED:
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
            if held is not None and held.agent != actor:
                raise PermissionDenied(
                    f"signal {change.name!r} of run {record.run_id} is awaited by {held.agent}; "
                    f"{actor} cannot take it over (use another signal name)"
                )
            record.waits[change.name] = Waiter(agent=actor, task_id=change.task_id)
        case CancelTasks():
            new = [t for t in change.task_ids if t not in record.cancelled_tasks]
            if not new:
                return False
            record.cancelled_tasks.extend(new)
        case Cancel():
            if record.status in ENDED:
                return False
            record.status, record.ended = "cancelled", now
            record.error = ErrorInfo(type="Cancelled", message=change.reason)
        case StoreSignal():
            if record.status in ENDED:
                raise RunEnded(record.run_id, record.status, "it waits for no signal")
            if change.name in record.signals:
                return False
            record.signals[change.name] = change.data
    return True


class RunEnded(RelayError):
    """The run has already ended; what was asked applies only to a live run."""

    def __init__(self, run_id: str, status: str, why: str) -> None:
        super().__init__(f"run {run_id} already {status}; {why}")
        self.run_id, self.status, self.why = run_id, status, why

    def details(self) -> dict[str, str | int | float | bool]:
        return {"run_id": self.run_id, "status": self.status, "why": self.why}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        d = info.details
        return cls(str(d.get("run_id", "")), str(d.get("status", "")), str(d.get("why", "")))


def run_end_id(run_id: str, ended: float) -> str:
    """The events stream's dedup id of a run's end: its end event is stored once however often
    it is sent (a resent or redelivered finish); a run reopened and ended again ends anew."""
    return f"{run_id}:ended:{ended!r}"
