"""One caller's runs, on the gateway's shared bus connection: what `relaybus.Client(user=...,
token=...)` does (submit as the user, with the token checked and the root link stamped by the
identity service), without a connection per caller, and with ownership checked before a run is
read, signalled or cancelled."""

from __future__ import annotations

from typing import Any

import msgspec

from relaybus.bus import Bus, ErrorInfo, RelayError
from relaybus.services.runs.shown import shown_one
from relaybus.services.runs.state import RunRecord

from ..control import cancel_run, send_signal
from ..submit import run_store, submit
from .access import Caller


class NotYourRun(RelayError):
    """The run does not exist, or another user submitted it (both look the same to a caller)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id} of yours")
        self.run_id = run_id

    def details(self) -> dict[str, str | int | float | bool]:
        return {"run_id": self.run_id}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        return cls(str(info.details.get("run_id", "")))


class CallerRuns:
    def __init__(self, bus: Bus, caller: Caller) -> None:
        self.bus, self.caller = bus, caller

    @property
    def sender(self) -> str:
        return f"user:{self.caller.user}"

    async def submit(self, agent: str, payload: Any, run_id: str) -> None:
        await submit(
            self.bus,
            agent,
            msgspec.json.encode(payload),
            sender=self.sender,
            run_id=run_id,
            token=self.caller.token,
        )

    async def record(self, run_id: str) -> RunRecord:
        """The run's record, if this caller submitted it; NotYourRun otherwise."""
        found = await (await run_store(self.bus)).get(run_id)
        if found is None or found.submitted_by != self.sender:
            raise NotYourRun(run_id)
        return await shown_one(self.bus, found)

    async def cancel(self, run_id: str) -> None:
        await self.record(run_id)
        await cancel_run(self.bus, run_id, f"cancelled over A2A by {self.sender}")

    async def signal(self, run_id: str, name: str, data: Any) -> None:
        await self.record(run_id)
        await send_signal(self.bus, run_id, name, data, sender=self.sender)
