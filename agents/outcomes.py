"""How a finished task's outcome reaches whoever waits for it (the parent task, or the run's
record and a waiting submitter), and the run events an agent publishes."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import msgspec

from relaybus.bus import Bus, Envelope, ErrorInfo, Event
from relaybus.bus.envelope import derived_id
from relaybus.services.runs.client import RunWriter
from relaybus.services.runs.state import ENDED, Finish, run_end_id

from .charging import Costs, RunSpend
from .journal import Journal
from .messages import ChildResult
from .starts import HeldStarts


class Outcomes:
    def __init__(self, bus: Bus, name: str, run_writer: RunWriter, costs: Costs) -> None:
        self.bus = bus
        self.name = name
        self.run_writer = run_writer
        self.costs = costs
        self.starts = HeldStarts(self.bus.publish_event)

    async def deliver(
        self,
        env: Envelope,
        journal: Journal,
        latency_ms: float = 0.0,
        run_spent: RunSpend | None = None,
    ) -> None:
        """Send a finished task's outcome to whoever waits for it: the parent task, or the run.
        `run_spent`: the run's spend after this attempt's last capture."""
        if journal.handoff:
            return  # the run goes on at the agent it was handed to
        ok = journal.status == "completed"
        if env.parent_id:
            outcome = ChildResult(
                child=env.id,
                ok=ok,
                result=msgspec.Raw(journal.result or b"null"),
                error=journal.error.public() if journal.error else None,
            )
            # the event first: a watcher sees a child return before the parent it wakes ends
            await self.emit(
                env,
                "returned",
                recipient=env.reply_to,
                error=journal.error,
                latency_ms=latency_ms,
                detail=journal.status,
            )
            await self.bus.publish(
                Envelope(
                    id=derived_id(env.id, "outcome"),
                    run_id=env.run_id,
                    kind="result" if ok else "error",
                    sender=self.name,
                    recipient=env.reply_to,
                    payload=msgspec.json.encode(outcome),
                    parent_id=env.parent_id,
                    chain=env.chain,
                    hop=env.hop,
                    created_at=time.time(),
                )
            )
            return
        status = journal.status if journal.status in ("completed", "cancelled") else "failed"
        # the root task, which spawned nothing, is the run's only spender: this attempt's last
        # capture says what the run cost (one of another attempt may be later: then it asks)
        alone = env.hop == 0 and not any(op.kind == "spawn" for op in journal.ops)
        cost = await self.costs.run_cost(env.run_id, seen=run_spent if alone else None)
        finish = Finish(
            status=status,
            result=msgspec.Raw(journal.result or b"null"),
            error=journal.error,
            steps=env.steps + len(journal.ops),
            hops=env.hop,
            cost=cost,
        )
        record, changed = await self.run_writer.change(env.run_id, finish, env.chain)
        # ended as this task ends it, by this attempt or by one whose reply or event was lost
        # (a resend, a redelivery after a crash): the end event goes out once either way. A run
        # cancelled from outside already has its event, from the operator that cancelled it.
        if changed or (record.status == status != "cancelled" and record.ended):
            # the record's outcome, which a resend or a rerun of a pure task cannot change
            result = (
                journal.result
                if changed or record.result is None
                else msgspec.json.encode(record.result)
            )
            await self.emit(
                env,
                status,
                result=result,
                error=journal.error if changed else record.error,
                cost=cost,
                latency_ms=latency_ms,
                once=run_end_id(env.run_id, record.ended),
            )

    async def emit(
        self,
        env: Envelope,
        kind: str,
        *,
        recipient: str | None = None,
        detail: str = "",
        attempt: int = 0,
        error: ErrorInfo | None = None,
        result: bytes = b"",
        cost: int = 0,
        latency_ms: float = 0.0,
        child_id: str = "",
        input_tokens: int = 0,
        output_tokens: int = 0,
        score: float | None = None,
        once: str = "",
    ) -> None:
        started = await self.starts.before(env.id, kind) if env.id in self.starts else None
        queued_ms = 0.0
        if started is not None:  # the end says it started
            attempt, queued_ms = started.attempt, started.latency_ms
        event = self._event(
            env,
            kind,
            recipient,
            child_id=child_id,
            attempt=attempt,
            detail=detail,
            error=error,
            cost=cost,
            latency_ms=round(latency_ms, 3),
            queued_ms=round(queued_ms, 3),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            score=score,
            **({"result": msgspec.Raw(result)} if result else {}),
        )
        try:
            await self.bus.publish_event(event, durable=kind in ENDED, once=once)
        except BaseException as exc:
            if started is not None:  # the start it carried goes out alone (the end is resent)
                if isinstance(exc, Exception):
                    with contextlib.suppress(Exception):
                        await self.bus.publish_event(started)
                else:  # cancelled: it goes out on its own, not in this task
                    self.starts.publish_later(started)
            raise

    async def started(
        self, env: Envelope, attempt: int, queued_ms: float, *, hold: bool = True
    ) -> None:
        """A task's attempt began: its `started` event, held while the task is quick
        (`starts.py`) if `hold`."""
        event = self._event(env, "started", attempt=attempt, latency_ms=round(queued_ms, 3))
        if not (hold and self.starts.hold(event)):
            await self.bus.publish_event(event)

    def _event(
        self, env: Envelope, kind: str, recipient: str | None = None, **fields: Any
    ) -> Event:
        """An event of task `env` by this agent: from its sender to this agent, or from this
        agent to `recipient`."""
        return Event(
            run_id=env.run_id,
            kind=kind,
            sender=env.sender if recipient is None else self.name,
            recipient=self.name if recipient is None else recipient,
            envelope_id=env.id,
            parent_id=env.parent_id,
            **fields,
        )
