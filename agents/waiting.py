"""Waiting for a run to end with no JetStream consumer: any number of clients can wait.

A core subscription to the run's events wakes the waiter; the run record says how the run
ended. The run authority writes the record's end before the run's terminal event is published,
so a waiter that subscribes first and then reads the record cannot miss the end, and an event
forged by anyone outside the run costs one record read, never a false outcome. A slow re-read
covers a wake-up lost to a reconnect.

One shortcut: a waiter that knows the agent it submitted to takes a `completed` event from an
agent holding the run's line (that agent, or one a holder handed the run to, as the `handoff`
events say) as the outcome, without reading the record. Such an event names its publisher in
its subject's last token, which NATS lets only that agent's user publish, and a holder
publishes it only after the record took the same end; anything else (a failure, a
cancellation, an event from another agent) is read from the record."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec

from relaybus.bus import Bus, RelayError
from relaybus.bus.events import event_decoder
from relaybus.services.runs.state import ENDED, RunRecord
from relaybus.services.runs.store import RunStore

from .submit import RunOutcome, outcome_of, run_store

RECHECK_S = (2.0, 15.0)  # the first re-read of the record, and the longest gap between two


async def await_outcome(
    bus: Bus,
    run_id: str,
    timeout_s: float,
    runs: RunStore | None = None,
    *,
    must_exist: bool = False,
    agent: str = "",
) -> RunOutcome:
    """How run `run_id` ended, or status `timeout` if it had not within `timeout_s`.
    `must_exist`: a run id that names no run is an error (RelayError), not a wait. `agent`:
    the one the run was submitted to, whose `completed` event is taken as the outcome."""
    async with Waiter(bus, run_id, runs, agent) as waiter:
        return await waiter.outcome(timeout_s, must_exist=must_exist)


class Waiter:
    """A wake-up subscription to one run's events, opened before the run can end: `submit`
    opens it before publishing the task, so its first look at the record can wait for a
    wake-up (the record says `submitted` until then)."""

    def __init__(
        self, bus: Bus, run_id: str, runs: RunStore | None = None, agent: str = ""
    ) -> None:
        self.bus, self.run_id, self.runs = bus, run_id, runs
        self.ended = False  # an end event came since the last read of the record
        self._woken: set[asyncio.Future[None]] = set()  # what each `outcome` call awaits
        self.holders = {agent} if agent else set()  # who may end the run: see the module doc
        self.told: RunOutcome | None = None  # a holder's `completed` event
        self._sub: Any = None

    async def __aenter__(self) -> Waiter:
        self.runs = self.runs or await run_store(self.bus)
        kind_at = len(self.bus.subjects.prefix.split(".")) + 2  # <prefix>.event.<run>.<kind>

        async def wake(msg: Any) -> None:
            tokens = msg.subject.split(".")
            if len(tokens) <= kind_at:
                return
            kind = tokens[kind_at]
            source = tokens[kind_at + 1] if len(tokens) == kind_at + 2 else ""
            if source in self.holders and kind in ("completed", "handoff"):
                self._told_by_holder(kind, source, msg.data)
            if kind in ENDED:
                self.ended = True
                for woken in self._woken:
                    _wake(woken)

        self._sub = await self.bus.nc.subscribe(self.bus.subjects.events_of(self.run_id), cb=wake)
        return self

    def _told_by_holder(self, kind: str, source: str, data: bytes) -> None:
        try:
            event = event_decoder.decode(data)
        except msgspec.DecodeError:
            return  # not the runtime's event: the record decides
        if event.run_id != self.run_id:
            return
        if kind == "handoff" and event.recipient:  # the line moves on: the sender lets go
            self.holders.discard(source)
            self.holders.add(event.recipient)
        elif kind == "completed":
            self.told = outcome_of(event)

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
            if self.told is not None:
                return self.told
            if read:
                self.ended = False
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
            if not self.ended and self.told is None:
                await self._woken_or_after(min(left, recheck))
            recheck = min(recheck * 2, RECHECK_S[1])

    async def _woken_or_after(self, delay_s: float) -> None:
        # a future and a timer, not `asyncio.wait_for(event.wait())`: that costs a task per
        # wait, about 28 µs of a submitting client's CPU per run
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        self._woken.add(woken)
        timer = loop.call_later(delay_s, _wake, woken)
        try:
            await woken
        finally:
            timer.cancel()
            self._woken.discard(woken)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


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
