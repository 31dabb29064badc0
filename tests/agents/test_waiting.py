"""A run's waiter (agents/waiting.py) wakes at the run's end event, whoever is waiting on it."""

from __future__ import annotations

import asyncio
import time

from relaybus.agents.submit import run_store
from relaybus.agents.waiting import Waiter
from relaybus.bus import Bus
from relaybus.bus.events import Event
from relaybus.bus.ids import new_id
from relaybus.services.runs.state import RunRecord, submitted_record


async def test_every_wait_on_one_waiter_wakes_at_the_end_not_at_its_recheck(bus: Bus) -> None:
    runs = await run_store(bus)
    run_id = new_id()
    await runs.create(submitted_record(run_id, "worker", "user:dev", time.time()))
    async with Waiter(bus, run_id, runs, "worker") as waiter:
        waits = [asyncio.create_task(waiter.outcome(30)) for _ in range(3)]
        await asyncio.sleep(0.5)  # each has read the record (submitted) and waits
        assert not any(w.done() for w in waits)

        def end(record: RunRecord) -> bool:
            record.status, record.ended, record.result = "completed", time.time(), {"ok": 1}
            return True

        await runs.update(run_id, end)
        # from no agent of the run's line: a wake-up only, the record says how it ended
        await bus.publish_event(
            Event(run_id=run_id, kind="completed", sender="user:dev", recipient="worker")
        )
        # the first re-read is 2 s away: only the wake-up ends these waits sooner
        outcomes = await asyncio.wait_for(asyncio.gather(*waits), 1.5)
    assert [(o.status, o.result) for o in outcomes] == [("completed", {"ok": 1})] * 3
