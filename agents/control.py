"""Controlling runs from outside: cancel, approve (signals), and reading run records."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from relaybus.bus import Bus, Envelope, ErrorInfo, Event, RelayError, new_id
from relaybus.bus.events import event_encoder

from .messages import Control, SignalBody
from .runs import TERMINAL_RUN, RunRecord
from .submit import run_store


async def cancel_run(bus: Bus, run_id: str, reason: str = "cancelled by user") -> RunRecord:
    """Mark the run cancelled and stop its in-flight handlers everywhere."""
    runs = await run_store(bus)
    before = await runs.get(run_id)
    if before is None:
        raise RelayError(f"no run {run_id}; `relaybus runs` lists the recent ones")
    if before.status in TERMINAL_RUN:
        raise RelayError(f"run {run_id} already {before.status}; nothing to cancel")
    error = ErrorInfo(type="Cancelled", message=reason)
    await runs.finish(run_id, "cancelled", error=error)
    await bus.publish_core(
        bus.subjects.control(run_id),
        msgspec.json.encode(Control(action="cancel", run_id=run_id, reason=reason)),
    )
    event = Event(run_id=run_id, kind="cancelled", detail=reason, error=error)
    await bus.publish_bytes(bus.subjects.event(run_id, "cancelled"), event_encoder.encode(event))
    record = await runs.get(run_id)
    assert record is not None
    return record


async def send_signal(
    bus: Bus, run_id: str, name: str, data: Any = None, sender: str = "user:dev"
) -> bool:
    """Deliver signal `name` (e.g. an approval) to the run. Returns True if a task was waiting
    for it; otherwise the signal is kept and the task gets it when it asks."""
    runs = await run_store(bus)
    body = msgspec.json.encode(data)

    def store(record: RunRecord) -> bool:
        if record.status in TERMINAL_RUN:
            raise RelayError(f"run {run_id} already {record.status}; it waits for no signal")
        if name in record.signals:
            return False
        record.signals[name] = msgspec.Raw(body)
        return True

    record = await runs.update(run_id, store)
    waiter = record.waits.get(name)
    if waiter is None:
        return False
    await bus.publish(
        Envelope(
            id=new_id(),
            run_id=run_id,
            kind="signal",
            sender=sender,
            recipient=waiter.agent,
            payload=msgspec.json.encode(SignalBody(name=name, data=msgspec.Raw(body))),
            parent_id=waiter.task_id,
            created_at=time.time(),
        )
    )
    return True
