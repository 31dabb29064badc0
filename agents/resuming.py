"""How a waiting task resumes: a child's outcome, a signal or a due timer is merged into the
parent task's journal, and the task runs again (replaying its journal) once what it waits for
has all arrived. A redelivered message that already drove a task to its end repeats the outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from relaybus.bus import Delivery, Envelope, Reject, RelayError, Retry, decode

from .execution import both
from .guard import runtime_payload
from .journal import FINAL, ClaimLost, Journal, Outcome, claim, driver_of, drives
from .merging import Merged
from .messages import ChildResult, TimerFired, signal_decoder

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("relaybus.worker")
EARLY_RESULT_TRIES = 5  # deliveries of a child's result its parent's journal does not know yet
MAX_TIMER_S = 100 * 365 * 86400.0  # a redelivery delay is int64 nanoseconds: at most 292 years
_child_result_decoder = msgspec.json.Decoder(ChildResult)


async def on_outcome(worker: Worker, d: Delivery) -> None:
    env = d.envelope
    outcome = runtime_payload(env, _child_result_decoder)

    def check(journal: Journal) -> str:
        sent_to = spawned(journal).get(outcome.child)
        if sent_to is None:
            return f"task {env.parent_id} started no child task {outcome.child}"
        if sent_to != d.source:
            return f"the result of child task {outcome.child} must come from {sent_to}"
        return ""

    traceparent = d.headers.get("traceparent", "")

    def merge(journal: Journal) -> None:
        journal.children.setdefault(
            outcome.child,
            Outcome(
                ok=outcome.ok,
                result=bytes(outcome.result),
                error=outcome.error,
                traceparent=traceparent,
            ),
        )

    await merge_and_resume(worker, env, merge, d, check)


async def on_signal(worker: Worker, d: Delivery) -> None:
    env = d.envelope
    body = runtime_payload(env, signal_decoder)
    if isinstance(body, TimerFired):
        timer = body.timer
        wait_s = body.due - time.time()
        if wait_s > MAX_TIMER_S:  # JetStream would ignore the delay and redeliver at once
            raise Reject(f"timer {timer} is due in {wait_s:.3g}s, past what it can wait")
        if wait_s > 0:
            raise Retry("timer not due yet", delay_s=wait_s)

        def fire(journal: Journal) -> None:
            if timer not in journal.timers:
                journal.timers.append(timer)

        await merge_and_resume(worker, env, fire, d)
        return
    name, data = body.name, bytes(body.data)
    await worker.emit_event(env, "signal", detail=name)
    await merge_and_resume(worker, env, lambda j: j.signals.setdefault(name, data), d)


class Taken(NamedTuple):
    """A parent task this delivery is to run: its journal at `revision`, its new owner, whether
    the delivery woke it, and whether that (the claim) is stored yet."""

    journal: Journal
    revision: int
    owner: str
    woken: bool
    stored: bool


async def merge_and_resume(
    worker: Worker, env: Envelope, change: Any, d: Delivery, check: Any = None
) -> None:
    # a write of the parent's journal on its way here (its parent publishes its children, then
    # writes the journal that names them): wait for it rather than re-read the journal on a
    # timer, and outside the turn, so a stuck one does not hold up the other outcomes in turn
    await worker.journals.written_here(env.run_id, env.parent_id, WRITTEN_HERE_S)
    for _ in range(CLAIM_ROUNDS):
        try:
            await _merge_and_run(worker, env, change, d, check)
            return
        except ClaimLost as exc:  # the journal moved while it woke: merge it again, as read
            log.info("%s; merging %s again", exc, env.kind)
    raise Retry(f"task {env.parent_id} kept moving while {env.kind} woke it", delay_s=0.5)


async def _merge_and_run(
    worker: Worker, env: Envelope, change: Any, d: Delivery, check: Any
) -> None:
    journals = worker.journals
    claim_stored = None
    async with journals.one_at_a_time(env.run_id, env.parent_id):
        # the turn before may have woken the task: its claim is stored by the task's first
        # write, and this merge starts from what that write stored
        await journals.written_here(env.run_id, env.parent_id, CLAIM_ON_ITS_WAY_S)
        step = await _merge(worker, env, change, d, check)
        if isinstance(step, Taken) and not step.stored:
            claim_stored = journals.on_its_way(env.run_id, env.parent_id)
    if isinstance(step, Grouped):  # stored after the turn: the next outcome can join its write
        step = await _after_merge(worker, env, d, step.owner, await step.merged)
    if step is None:
        return
    journal, revision, owner, woken, stored = step
    task_env = decode(journal.task)

    async def resumed() -> None:
        if claim_stored is not None:
            claim_stored()
        try:
            await worker.emit_event(task_env, "resumed", detail=f"{env.kind} from {env.sender}")
        except RelayError as exc:  # an event is for watching: the task goes on
            log.warning("could not publish the resumed event of task %s: %s", task_env.id, exc)

    if woken and stored:
        await resumed()
    try:  # run it after the turn: the next outcome need not wait for it
        # not stored: the task's first write stores the claim, and says it resumed after it
        await worker.execute(journal, revision, owner, d, claim=None if stored else resumed)
    finally:
        if claim_stored is not None:
            claim_stored()


class Grouped(NamedTuple):
    """A merge joined to the next write of the parent's journal (`Merges`): `merged` is done
    once that write is stored."""

    owner: str
    merged: asyncio.Future[Merged]


async def _merge(
    worker: Worker, env: Envelope, change: Any, d: Delivery, check: Any
) -> Taken | Grouped | None:
    """Merge `change` into the parent's journal: `Taken` when this delivery is to run the task
    now, `Grouped` when the merge goes with the next write of the journal, None when there is
    nothing to do.

    A change that wakes the task is not written on its own: the woken task's first write
    stores it with the claim, a CAS write against the revision read here (`Execution`), so a
    resumed task that ends at once costs one journal write, not two. Until then the journal
    still waits: a crash leaves the outcome's message unacked, and its redelivery merges it
    again. It wakes the task on top of the merges on their way, once they are stored. A change
    that does not wake the task joins the next write (`Merges`): outcomes that arrive together
    share one."""
    # the parent's journal as this process last wrote it (it parked the wait here, most
    # often): the merge's CAS write needs no read first, and fails if the copy is stale
    found = worker.journals.recent(env.run_id, env.parent_id)
    if found is not None and check is not None and check(found[0]):
        found = None  # a refusal is decided on a fresh read only
    if found is None:
        found = await worker.journals.load(env.run_id, env.parent_id)
    if d.attempt == 1 and _not_yet(found, check):
        found = await _read_again_soon(worker, env, check)
    if found is None:
        if d.attempt < min(EARLY_RESULT_TRIES, worker.retry.attempts):
            # a task's journal is stored by its first write, which follows the publish of
            # its children: a child that answered within that moment is read again shortly
            raise Retry(
                f"no journal for task {env.parent_id} yet; reading it again",
                delay_s=_early_retry_s(worker, d.attempt),
            )
        log.warning(
            "no journal for task %s of run %s; dropping %s", env.parent_id, env.run_id, env.kind
        )
        return None
    if check is not None and (problem := check(found[0])):
        if found[0].status == "running" and d.attempt < min(
            EARLY_RESULT_TRIES, worker.retry.attempts
        ):
            # the parent publishes its children before its journal records them: a child that
            # answered within that moment is read again shortly (a forged one is refused then)
            raise Retry(
                f"{problem} yet; reading its journal again",
                delay_s=_early_retry_s(worker, d.attempt),
            )
        await worker.guard.refuse(env, d, problem)
    owner = worker.new_owner()
    driver = driver_of(d.stream, d.sequence)
    merges = worker.merges
    journal, revision = merges.ahead(env.run_id, env.parent_id, found)
    change(journal)  # on a copy of its own (`recent` and `load` decode one each time)
    if claim(journal, owner, driver):
        if merges.on_their_way(env.run_id, env.parent_id):
            # its claim would meet the journal they move: it wakes the task once they are
            # stored (no other merge joins them meanwhile: they join in turn)
            try:  # (a bucket that does not answer: each write tries for 20 s)
                async with asyncio.timeout(worker.bus.settings.ack_wait_s / 2):
                    await merges.stored(env.run_id, env.parent_id)
            except TimeoutError:
                raise Retry(
                    f"the merges into task {env.parent_id}'s journal are still on their way",
                    delay_s=worker.retry.delay_s(d.attempt),
                ) from None
            return await _merge(worker, env, change, d, check)
        return Taken(journal, revision, owner, woken=True, stored=False)
    merged = merges.merge(
        env.run_id, env.parent_id, change, owner=owner, driver=driver, current=found
    )
    return Grouped(owner, merged)


async def _after_merge(
    worker: Worker, env: Envelope, d: Delivery, owner: str, merged: Merged
) -> Taken | None:
    """What a stored merge leaves this delivery to do: run the task it woke against the odds
    (its copy was stale, the fresh read wakes it), or go on with the task it drives, when it is
    that delivery's redelivery."""
    journal, revision, claimed = merged
    if claimed:
        if await worker.cancelled_before_start(decode(journal.task)):
            # a cancelled run (or task) wakes no task: nothing more of it runs
            await worker.journals.mutate(env.run_id, env.parent_id, _cancelled, owner=owner)
            return None
        return Taken(journal, revision, owner, woken=True, stored=True)
    if is_driver(worker, journal, d) and d.attempt > 1:
        if journal.status in FINAL:  # this message drove it to the end, then the worker died
            task_env = decode(journal.task)  # before its outcome went out
            if journal.status == "completed" and await worker.cancelled_before_start(task_env):
                # woken in a run cancelled while it waited, and died before it said so
                await worker.journals.mutate(env.run_id, env.parent_id, _ended_unsent)
                return None
            await worker.deliver(task_env, journal)
            return None
        if journal.status == "running":  # taken over after a crash: beside a read for a cancel
            driver = driver_of(d.stream, d.sequence)
            (journal, revision), cancelled = await both(
                worker.journals.mutate(env.run_id, env.parent_id, take_over(owner, driver)),
                worker.cancelled_before_start(decode(journal.task)),
            )
            if cancelled:  # cancelled while no one ran it: nothing more of it runs
                await worker.journals.mutate(env.run_id, env.parent_id, _cancelled, owner=owner)
                return None
            return Taken(journal, revision, owner, woken=False, stored=True)
    return None


#: How long an outcome waits for its parent's journal write that this process has on its way.
WRITTEN_HERE_S = 5.0
#: How long an outcome waits, in turn, for a woken task's claim to be stored by the task's first
#: write (a handler slow to reach it does not hold the outcomes behind it for longer: they merge
#: and the woken task's write meets the journal moved, `ClaimLost`, and merges again).
CLAIM_ON_ITS_WAY_S = 1.0
#: Merges of one outcome in this process when a woken task's claim is lost (each a replay of the
#: handler up to its first write), before its message is put back.
CLAIM_ROUNDS = 3
#: In-process re-reads of a parent's journal that does not know a child's outcome yet, before
#: the message is put back: its children are published just before its journal's write, and a
#: child that answers at once (a pure one) often beats that write by a millisecond or two.
SOON_S = (0.002, 0.008, 0.03)


def _not_yet(found: tuple[Journal, int] | None, check: Any) -> bool:
    """Whether the parent's journal is missing, or running without knowing this outcome."""
    if found is None:
        return True
    return check is not None and found[0].status == "running" and bool(check(found[0]))


async def _read_again_soon(worker: Worker, env: Envelope, check: Any) -> tuple[Journal, int] | None:
    found = None
    for delay_s in SOON_S:
        await asyncio.sleep(delay_s)
        found = await worker.journals.load(env.run_id, env.parent_id)
        if not _not_yet(found, check):
            break
    return found


def _cancelled(journal: Journal) -> None:
    if journal.status not in FINAL:
        journal.status, journal.owner, journal.waiting = "cancelled", "", None


def _ended_unsent(journal: Journal) -> None:
    """A woken task's end kept from whoever waited (its run was cancelled while it waited)."""
    if journal.status == "completed":
        journal.status, journal.result, journal.owner = "cancelled", b"", ""


def _early_retry_s(worker: Worker, attempt: int) -> float:
    """When to read a parent's journal again for an outcome it does not know yet: at once for
    the moment between its children's publish and its journal's write; later, past the ack
    wait, for a parent that died in that moment (its redelivery replays and records them)."""
    return 0.5 if attempt == 1 else max(0.5, worker.bus.settings.ack_wait_s / 2)


def spawned(journal: Journal) -> dict[str, str]:
    """Child task id → the agent it was sent to, from the journal's spawn operations."""
    out: dict[str, str] = {}
    for op in journal.ops:
        if op.kind == "spawn" and op.result:
            try:
                out[msgspec.json.decode(op.result)] = op.name
            except msgspec.DecodeError:
                continue
    return out


def is_driver(worker: Worker, journal: Journal, d: Delivery) -> bool:
    """Whether `d` is (a redelivery of) the delivery that drives the journal's task."""
    return drives(journal, d.stream, d.sequence)


def take_over(owner: str, driver: str, *, reopen: bool = False) -> Any:
    """A journal change: `owner` now runs the task, driven by delivery `driver`."""

    def change(journal: Journal) -> None:
        journal.owner, journal.driver = owner, driver
        if reopen:
            journal.status, journal.error = "running", None

    return change
