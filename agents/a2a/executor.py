"""An A2A task is a relaybus run: the a2a-sdk `AgentExecutor` that submits it, follows its
record and answers with its result.

| A2A                                   | relaybus                                              |
|---------------------------------------|-------------------------------------------------------|
| first message of a task               | `submit` as the caller, run id `a2a-<task id>`        |
| submitted / working                   | run submitted / running                               |
| input-required                        | a task of the run waits in `ctx.wait_signal(NAME)`    |
| follow-up message on that task        | signal NAME with the message as its data              |
| completed (artifact `result`)         | run completed (its result as a data part)             |
| failed / canceled                     | run failed / cancelled (`tasks/cancel` cancels it)    |

The SDK keeps tasks per user (its task store is keyed by the caller's name), and every run this
executor touches is checked to be the caller's own before it is signalled or cancelled.
"""

from __future__ import annotations

from typing import Any

from a2a.helpers.proto_helpers import (
    get_data_parts,
    get_text_parts,
    new_data_part,
    new_task,
    new_text_message,
    new_text_part,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events.event_queue_v2 import EventQueue
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types import Message, TaskState
from a2a.utils.errors import InvalidParamsError, TaskNotFoundError
from google.protobuf.json_format import MessageToDict

from relaybus.bus import Bus, PermissionDenied
from relaybus.bus.feed import EventFeed
from relaybus.services.identity.client import publish_audit
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.runs.state import ENDED, RunRecord

from .access import Caller
from .extension import read_delegation
from .runs import CallerRuns, NotYourRun

CALLER_KEY = "relaybus.caller"
RECHECK_S = 5.0  # how often a run's record is read again when no event came


def run_id_of(task_id: str) -> str:
    return f"a2a-{task_id}"


def _json_value(value: Any) -> Any:
    """A protobuf Value read back: whole numbers as ints (the wire keeps every number a
    double), the rest as it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def payload_of(message: Message | None) -> Any:
    """A message as a task payload: its first data part's value, else `{"text": ...}`."""
    if message is None:
        return {}
    data = get_data_parts(list(message.parts))
    if data:
        return _json_value(data[0])
    return {"text": "\n".join(get_text_parts(list(message.parts)))}


def metadata_of(context: RequestContext) -> dict[str, Any]:
    """The message's metadata and the request's (the message's wins)."""
    found = dict(context.metadata)
    if context.message is not None:
        found.update(MessageToDict(context.message.metadata))
    return found


def caller_of(context: RequestContext) -> Caller:
    caller = context.call_context.state.get(CALLER_KEY)
    if not isinstance(caller, Caller):  # the gateway's middleware always sets it
        raise PermissionDenied("an A2A request reached the agent without a verified caller")
    return caller


class RunExecutor(AgentExecutor):
    """Serves one relaybus agent over A2A, on one bus connection shared by every caller."""

    def __init__(self, bus: Bus, agent: str) -> None:
        self.bus = bus
        self.agent = agent

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        caller = caller_of(context)
        task_id, context_id = str(context.task_id), str(context.context_id)
        updater = TaskUpdater(event_queue, task_id, context_id)
        runs = CallerRuns(self.bus, caller)
        run_id = run_id_of(task_id)
        if context.current_task is None:
            await self._audit(caller, "a2a/send", "allow", run_id, context)
            history = [context.message] if context.message is not None else []
            submitted = new_task(
                task_id, context_id, TaskState.TASK_STATE_SUBMITTED, history=history
            )
            await event_queue.enqueue_event(submitted)
            await runs.submit(self.agent, payload_of(context.message), run_id)
        else:
            record = await self._owned(runs, run_id, "a2a/follow-up")
            await self._answer(runs, record, context)
        await self._follow(runs, run_id, updater)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Nothing left to do: GatewayHandler cancelled the run before the SDK got here, and
        the SDK closes the task as canceled (the run's follower may say so first)."""

    async def _owned(self, runs: CallerRuns, run_id: str, action: str) -> RunRecord:
        """The run's record, if the caller submitted it; TaskNotFound (audited) otherwise."""
        try:
            return await runs.record(run_id)
        except NotYourRun:
            await self._audit(runs.caller, action, "deny", run_id, None, "not the caller's run")
            raise TaskNotFoundError(f"no task of yours maps to run {run_id}") from None

    async def _answer(self, runs: CallerRuns, record: RunRecord, context: RequestContext) -> None:
        """Deliver a follow-up message as the signal the run waits for."""
        pending = record.pending_signals()
        named = str(metadata_of(context).get("relaybus.signal", ""))
        if not pending or (named and named not in pending):
            waits = ", ".join(pending) or "no signal"
            raise InvalidParamsError(
                message=f"run {record.run_id} waits for {waits}; a follow-up answers one of those"
            )
        if len(pending) > 1 and not named:
            raise InvalidParamsError(
                message=f"run {record.run_id} waits for {', '.join(pending)}: name one in the "
                "message metadata as `relaybus.signal`"
            )
        await runs.signal(record.run_id, named or pending[0], payload_of(context.message))

    async def _follow(self, runs: CallerRuns, run_id: str, updater: TaskUpdater) -> None:
        """Report the run's state as it changes, until it ends or waits for input. The state
        comes from the run's record (written by the run authority); events only wake this up."""
        shown: TaskState | None = None
        async with EventFeed(self.bus, run_id, replay=True) as feed:
            while True:
                record = await runs.record(run_id)
                if record.status in ENDED:
                    await self._ended(record, updater)
                    return
                if record.pending_signals():
                    waits = ", ".join(record.pending_signals())
                    message = new_text_message(
                        f"waiting for {waits}: answer with a message on this task",
                        context_id=updater.context_id,
                        task_id=updater.task_id,
                    )
                    await updater.requires_input(message)
                    return
                if record.status == "running" and shown != TaskState.TASK_STATE_WORKING:
                    await updater.start_work()
                    shown = TaskState.TASK_STATE_WORKING
                await feed.next(RECHECK_S)

    async def _ended(self, record: RunRecord, updater: TaskUpdater) -> None:
        if record.status == "completed":
            parts = [new_data_part(record.result)]
            if isinstance(record.result, str):
                parts.insert(0, new_text_part(record.result))
            await updater.add_artifact(parts, name="result")
            await updater.complete()
            return
        error = record.error
        text = f"{error.type}: {error.message}" if error else record.status
        message = new_text_message(text, task_id=updater.task_id, context_id=updater.context_id)
        if record.status == "cancelled":
            await updater.cancel(message)
        else:
            await updater.failed(message)

    async def _audit(
        self,
        caller: Caller,
        action: str,
        decision: str,
        run_id: str,
        context: RequestContext | None,
        reason: str = "",
    ) -> None:
        detail: dict[str, Any] = {"agent": self.agent}
        if context is not None:
            delegation = read_delegation(metadata_of(context))
            if delegation is not None:
                detail["delegated_by"] = delegation.path
        await publish_audit(
            self.bus,
            AuditRecord(
                action=action,
                decision=decision,
                principal=caller.user,
                actor="a2a:gateway",
                reason=reason,
                run_id=run_id,
                detail=detail,
            ),
        )
