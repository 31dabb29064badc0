"""Run records as views show them (`relaybus runs`, the console, MCP, A2A).

A run's record is written when the run is submitted and when it ends, not when it starts: a
start that wrote it would cost every hop a write and its reply. In between, whether the run
is under way is the events' to say: a `submitted` record whose entry agent published its
`started` event shows as `running`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec

from relaybus.bus import Bus
from relaybus.bus.streams import is_stored

from .state import RunRecord


async def shown(bus: Bus, records: Sequence[RunRecord]) -> list[RunRecord]:
    """`records` with each `submitted` one whose line started marked `running` (one stored
    event read per such run; a record that cannot be checked stays as it is)."""
    return list(await asyncio.gather(*(shown_one(bus, record) for record in records)))


async def shown_one(bus: Bus, record: RunRecord) -> RunRecord:
    if record.status != "submitted" or not record.agent:
        return record
    subject = bus.subjects.event(record.run_id, "started", record.agent)
    if not await is_stored(bus, bus.subjects.stream("EVENTS"), subject):
        return record
    return msgspec.structs.replace(record, status="running")
