"""How a task starts: its sender and chain checked, then the handler runs, its journal stored
(and its run's record read for a cancel) by its first write; a redelivery reads the record,
then takes the task over, repeats a recorded outcome, or does nothing."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from relaybus.bus import (
    Abandon,
    Delivery,
    Envelope,
    EnvelopeInvalid,
    ErrorInfo,
    Refused,
    Reject,
    Retry,
    decode,
    encode,
)
from relaybus.bus.kv import RevisionConflict
from relaybus.services.identity.errors import ChainInvalid, RevocationUnknown
from relaybus.services.runs.client import look
from relaybus.services.runs.state import (
    ENDED,
    RUN_REVISION_HEADER,
    Reopen,
    RunRecord,
    submitted_record,
)

from .execution import both
from .journal import FINAL, NOT_STORED, Journal, driver_of
from .limits import limit_problem
from .resuming import is_driver, take_over

if TYPE_CHECKING:
    from .worker import Worker


async def on_task(worker: Worker, d: Delivery) -> None:
    env = d.envelope
    if bool(env.parent_id) != bool(env.reply_to):  # its outcome could go nowhere, ever
        raise Reject(
            f"a child task names both parent_id and reply_to, or neither (parent_id="
            f"{env.parent_id!r}, reply_to={env.reply_to!r})"
        )
    if worker.gate is not None and d.source:
        try:  # before anything is written: an agent's forged or replayed chain changes
            await worker.guard.verify(env)  # nothing (a user's bad chain fails its own run below)
        except RevocationUnknown as exc:  # NATS failing over: verify again shortly
            raise Retry(f"{exc}; retrying", delay_s=2.0) from None
        except ChainInvalid as exc:
            raise Refused(str(exc)) from None
    replay = d.replayed
    owner = worker.new_owner()
    first = d.attempt == 1 and not replay
    journal = _new_journal(worker, env, owner, d)
    created: int | None
    run: RunRecord | None = None
    if first and worker.cancellations.is_cancelled(env):
        return  # cancelled while this process ran: nothing ran, nothing is stored
    if first and worker.journals_early:  # stored now, beside the record's read
        run, created = await both(
            look(worker.run_writer, env.run_id, env.chain), _create(worker, journal)
        )
    elif first:
        hint = d.headers.get(RUN_REVISION_HEADER, "")
        if not env.parent_id and hint.isascii() and hint.isdigit() and 0 < len(hint) <= 18:
            # the record as `submit` created it: the end writes it without reading it first
            worker.run_writer.submitted(
                submitted_record(env.run_id, env.recipient, env.sender, env.created_at),
                int(hint),
            )
        # Nothing read or written at the start. The journal is stored by the task's first
        # write (the one before its first effect or child, or its end), beside a read of the
        # run's record for a cancel that came before the start; a duplicate that runs
        # meanwhile is fenced off by that write. A task that writes nothing ends in the run's
        # record (or its parent), which refuses the end of a cancelled run.
        created = NOT_STORED
    else:
        run = await look(worker.run_writer, env.run_id, env.chain)
        created = None
    if run is not None:
        if run.status == "cancelled" or env.id in run.cancelled_tasks:
            if created:  # stored: nothing ran, and the journal says so
                await worker.journals.mutate(env.run_id, env.id, _cancelled, owner=owner)
            return  # (not stored: a redelivery reads the record again)
        if replay and run.status == "failed" and not env.parent_id:
            await worker.run_writer.change(env.run_id, Reopen(), env.chain)
    if created == NOT_STORED and journal.status == "failed":  # over a limit before it began:
        created = await _create(worker, journal)  # its outcome is stored before it goes out
    found = None
    if created is None:  # not a first delivery, or a duplicate's create that failed
        found = await worker.journals.load(env.run_id, env.id)
        if found is None and _ended_unjournaled(env, run, replay):
            # a pure task that ended its run without a journal, come back (its ack was
            # lost): the run's end again, from the record, not a rerun of the handler
            if run is not None and run.status == "completed":
                await worker.deliver(env, _from_record(worker, env, run))
            return
        if found is None:
            journal = _new_journal(worker, env, owner, d)
            created = await _create(worker, journal)
            if created is None:
                found = await worker.journals.load(env.run_id, env.id)
    if created is not None:
        if journal.status == "failed":  # over a limit before it began
            await worker.deliver(env, journal)
            return
        queued_ms = (time.time() - env.created_at) * 1000 if env.created_at else 0.0
        # a first delivery's start is held while the task is quick; a redelivery's goes out
        # at once (the attempt before it may have died without a trace)
        await worker.outcomes.started(env, d.attempt, max(0.0, queued_ms), hold=first)
        try:
            await worker.execute(journal, created, owner, d)
        except Abandon:
            if created != NOT_STORED:
                raise
            # its first write found the journal stored: a duplicate of a task that ended
            # answers as one (or is refused); of one that runs, it leaves the message
            found = await worker.journals.load(env.run_id, env.id)
            if found is None or found[0].status not in FINAL:
                raise
            await _repeat_outcome(worker, env, d, found[0])
        finally:  # an attempt over without an end event of its own (fenced, or its run ended)
            worker.outcomes.starts.send(env.id)
        return
    if found is None:
        return
    journal, revision = found
    if journal.status == "failed" and replay:
        journal, revision = await worker.journals.mutate(
            env.run_id, env.id, take_over(owner, driver_of(d.stream, d.sequence), reopen=True)
        )
        await worker.emit_event(env, "resumed", detail="replayed from the dead-letter queue")
        await worker.execute(journal, revision, owner, d)
    elif journal.status in FINAL:
        await _repeat_outcome(worker, env, d, journal)
    elif journal.status == "running" and (is_driver(worker, journal, d) or replay):
        released = not journal.owner  # the last attempt failed and let go of it
        journal, revision = await worker.journals.mutate(
            env.run_id, env.id, take_over(owner, driver_of(d.stream, d.sequence))
        )
        detail = "retried after a failed attempt" if released else "taken over after a crash"
        await worker.emit_event(env, "resumed", detail=detail, attempt=d.attempt)
        await worker.execute(journal, revision, owner, d)


def _ended_unjournaled(env: Envelope, run: RunRecord | None, replay: bool) -> bool:
    return run is not None and run.status in ENDED and not env.parent_id and not replay


def _from_record(worker: Worker, env: Envelope, run: RunRecord) -> Journal:
    return Journal(
        run_id=env.run_id,
        task_id=env.id,
        agent=worker.name,
        task=encode(env),
        status="completed",
        result=msgspec.json.encode(run.result),
    )


def _new_journal(worker: Worker, env: Envelope, owner: str, d: Delivery) -> Journal:
    journal = Journal(
        run_id=env.run_id,
        task_id=env.id,
        agent=worker.name,
        task=encode(env),
        owner=owner,
        driver=driver_of(d.stream, d.sequence),
    )
    if problem := limit_problem(env, worker.name):
        journal.status = "failed"
        journal.error = ErrorInfo(type="LimitExceeded", message=problem)
    return journal


async def _create(worker: Worker, journal: Journal) -> int | None:
    """Create a task's journal: its revision, or None if it exists (a duplicate)."""
    try:
        return await worker.journals.create(journal)
    except RevisionConflict:
        return None


def _cancelled(journal: Journal) -> None:
    if journal.status not in FINAL:
        journal.status, journal.owner = "cancelled", ""


async def _repeat_outcome(worker: Worker, env: Envelope, d: Delivery, journal: Journal) -> None:
    """A duplicate of a task that ended: its recorded outcome again (idempotent), unless the
    id was reused by another task, which is refused."""
    reused = _reused_task_id(journal, env)
    if reused:  # not a duplicate: the recorded outcome goes only to the task it answers
        await worker.guard.refuse(env, d, reused)
    await worker.deliver(env, journal)


def _reused_task_id(journal: Journal, env: Envelope) -> str:
    """Why `env` is not a duplicate of the finished task recorded under its id ("" if it is):
    another sender, parent, reply address or payload must not be answered from the journal."""
    try:
        first = decode(journal.task)
    except EnvelopeInvalid:
        return ""
    for field in ("sender", "parent_id", "reply_to", "payload"):
        if getattr(first, field) != getattr(env, field):
            return (
                f"task id {env.id!r} of run {env.run_id!r} already finished with another "
                f"{field}; a new task needs a new id"
            )
    return ""
