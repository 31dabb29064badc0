"""The ingress with identity off: a plain task with a header that is not what it should be
starts nothing, and its refusal is audited where `relaybus identity audit` finds it, whatever
run id it named."""

from __future__ import annotations

import asyncio

import msgspec

from relaybus.agents.ingress import Ingress
from relaybus.agents.submit import run_store
from relaybus.bus import Bus, Event
from relaybus.services.identity.client import read_audit

from ..conftest import wait_for


async def test_plain_tasks_with_bad_headers_start_nothing_and_are_audited(bus: Bus) -> None:
    stop = asyncio.Event()
    ingress = Ingress(bus)
    serving = asyncio.create_task(ingress.run(stop))
    events: list[Event] = []

    async def on_event(msg: object) -> None:
        events.append(msgspec.json.decode(msg.data, type=Event))  # type: ignore[attr-defined]

    watched = await bus.nc.subscribe(bus.subjects.events_of(), cb=on_event)
    handed: list[str] = []

    async def on_task(msg: object) -> None:
        handed.append(msg.subject)  # type: ignore[attr-defined]

    tasks = await bus.nc.subscribe(bus.subjects.task_admitted("echo"), cb=on_task)
    try:
        subject = f"{bus.subjects.prefix}.task.echo"
        for run_header in ("", "not a run id!", "x" * 65):
            await bus.js.publish(subject, b'{"x": 1}', headers={"Relay-Run": run_header})
        await bus.js.publish(subject, b"{not json", headers={"Relay-Run": "plain-bad-json"})
        good = {"Relay-Run": "plain-good", "Relay-User": "user:ann"}  # read as ann
        await bus.js.publish(subject, b'{"x": 2}', headers=good)
        await wait_for(lambda: ingress.admitted + ingress.refused == 5, what="five decisions")
        assert (ingress.admitted, ingress.refused) == (1, 4)

        # each refusal is audited as the user the task would have run as, naming the header
        denied = await read_audit(bus, "dev", decision="deny")  # `identity audit dev`
        reasons = [r.reason for r in denied]
        assert len(reasons) == 4, reasons
        assert sum("header Relay-Run = " in r and "is not a run id" in r for r in reasons) == 3
        assert any("plain-bad-json" == r.run_id and "JSON" in r.reason for r in denied)
        # only the good task was handed to the agent; no run exists but the good one's
        store = await run_store(bus)
        await wait_for(lambda: handed, what="the admitted task")
        assert len(handed) == 1
        record = await store.get("plain-good")
        assert record is not None and record.submitted_by == "user:ann"
        assert await store.get("plain-bad-json") is None
        # with identity off each refusal is also a `denied` event: on the run it names, or on
        # the id derived for it when the Relay-Run it gave is no run id
        await wait_for(lambda: sum(e.kind == "denied" for e in events) == 4, what="4 events")
        named = [e.run_id for e in events if e.kind == "denied"]
        assert "plain-bad-json" in named and "plain-good" not in named
        assert not {"", "not a run id!", "x" * 65} & set(named)
    finally:
        await watched.unsubscribe()
        await tasks.unsubscribe()
        stop.set()
        await asyncio.wait_for(serving, 30)
