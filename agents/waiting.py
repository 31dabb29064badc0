"""Waiting for a run to end with no JetStream consumer: any number of clients can wait.

A core subscription to the run's events only wakes the waiter; the run record says how the run
ended. The run authority writes the record's end before the run's terminal event is published,
so a waiter that subscribes first and then reads the record cannot miss the end, and an event
forged by anyone outside the run costs one record read, never a false outcome. A slow re-read
covers a wake-up lost to a reconnect."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from relaybus.bus import Bus, RelayError
from relaybus.services.runs.state import ENDED, RunRecord
from relaybus.services.runs.store import RunStore

from .submit import RunOutcome, run_store

RECHECK_S = (2.0, 15.0)  # the first re-read of the record, and the longest gap between two


async def await_outcome(
    bus: Bus,
    run_id: str,
    timeout_s: float,
    runs: RunStore | None = None,
    *,
    must_exist: bool = False,
) -> RunOutcome:
    """How run `run_id` ended, or status `timeout` if it had not within `timeout_s`.
    `must_exist`: a run id that names no run is an error (RelayError), not a wait."""
    async with Waiter(bus, run_id, runs) as waiter:
        return await waiter.outcome(timeout_s, must_exist=must_exist)


class Waiter:
    """A wake-up subscription to one run's events, opened before the run can end: `submit`
    opens it before publishing the task, so its first look at the record can wait for a
    wake-up (the record says `submitted` until then)."""

    def __init__(self, bus: Bus, run_id: str, runs: RunStore | None = None) -> None:
        self.bus, self.run_id, self.runs = bus, run_id, runs
        self.ended = asyncio.Event()
        self._sub: Any = None

    async def __aenter__(self) -> Waiter:
        self.runs = self.runs or await run_store(self.bus)
        kind_at = len(self.bus.subjects.prefix.split(".")) + 2  # <prefix>.event.<run>.<kind>

        async def wake(msg: Any) -> None:
            tokens = msg.subject.split(".")
            if len(tokens) > kind_at and tokens[kind_at] in ENDED:
                self.ended.set()

        self._sub = await self.bus.nc.subscribe(self.bus.subjects.events_of(self.run_id), cb=wake)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):  # a closed connection has no subscription left
            await self._sub.unsubscribe()

    async def outcome(
        self, timeout_s: float, *, read_first: bool = True, must_exist: bool = False
    ) -> RunOutcome:
        """`read_first=False` when the run cannot have ended before this waiter subscribed."""
        assert self.runs is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        recheck = RECHECK_S[0]
        read = read_first
        while True:
            if read:
                self.ended.clear()
                record = await self.runs.get(self.run_id)
                if record is None and must_exist:
                    raise RelayError(f"no run {self.run_id}; `relaybus runs` lists the recent ones")
                must_exist = False
                if record is not None and record.status in ENDED:
                    return outcome_of_record(record)
            read = True
            left = deadline - loop.time()
            if left <= 0:
                return RunOutcome(
                    run_id=self.run_id, status="timeout", error=f"no result within {timeout_s:g}s"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), min(left, recheck))
            recheck = min(recheck * 2, RECHECK_S[1])


def outcome_of_record(record: RunRecord) -> RunOutcome:
    error = None
    if record.error is not None:
        error = f"{record.error.type}: {record.error.message}"
    elif record.status != "completed":
        error = record.status
    return RunOutcome(
        run_id=record.run_id,
        status=record.status,
        result=record.result,
        error=error,
        cost=record.cost,
        error_info=record.error,
    )
