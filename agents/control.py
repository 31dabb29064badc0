"""Controlling runs from outside: cancel, approve (signals), and reading run records."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from relaybus.bus import Bus, Envelope, Event, new_id
from relaybus.services.runs.state import Cancel, RunEnded, RunRecord, StoreSignal, run_end_id

from .messages import CancelRun, Signal
from .submit import run_store


async def cancel_run(bus: Bus, run_id: str, reason: str = "cancelled by user") -> RunRecord:
    """Mark the run cancelled and stop its in-flight handlers everywhere."""
    record, changed = await (await run_store(bus)).change(run_id, Cancel(reason=reason), "operator")
    if not changed:
        raise RunEnded(run_id, record.status, "nothing to cancel")
    await bus.publish_core(
        bus.subjects.control(run_id),
        msgspec.json.encode(CancelRun(run_id=run_id, reason=reason)),
    )
    event = Event(run_id=run_id, kind="cancelled", detail=reason, error=record.error)
    await bus.publish_event(event, durable=True, once=run_end_id(run_id, record.ended))
    return record


async def send_signal(
    bus: Bus, run_id: str, name: str, data: Any = None, sender: str = "user:dev"
) -> bool:
    """Deliver signal `name` (e.g. an approval) to the run. Returns True if a task was waiting
    for it; otherwise the signal is kept and the task gets it when it asks."""
    body = msgspec.json.encode(data)
    store = StoreSignal(name=name, data=msgspec.Raw(body))
    record, _ = await (await run_store(bus)).change(run_id, store, "operator")
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
            payload=msgspec.json.encode(Signal(name=name, data=msgspec.Raw(body))),
            parent_id=waiter.task_id,
            created_at=time.time(),
        )
    )
    return True
