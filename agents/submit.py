"""Submitting a run from Python or the CLI, and waiting for how it ended."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import msgspec

from relaybus.bus import Bus, ErrorInfo, Event, RelayError, new_envelope
from relaybus.bus.envelope import derived_id
from relaybus.bus.feed import EventFeed
from relaybus.bus.kv import Bucket, RevisionConflict
from relaybus.bus.streams import agent_consumer, consumer_exists
from relaybus.bus.subjects import check_name
from relaybus.services.identity.client import IdentityClient
from relaybus.services.identity.settings import IdentitySettings
from relaybus.services.ledger.client import Budget, LedgerClient
from relaybus.services.runs.shown import shown_one
from relaybus.services.runs.state import ENDED, RUN_REVISION_HEADER, submitted_record
from relaybus.services.runs.store import RunStore

from .errors import SubmissionInvalid

log = logging.getLogger("relaybus.submit")


class RunOutcome(msgspec.Struct, kw_only=True):
    """How a run ended, as `publish --wait --json` prints it."""

    run_id: str
    status: str  # completed | failed | cancelled | timeout | submitted
    result: Any = None
    error: str | None = None
    cost: int = 0
    error_info: ErrorInfo | None = None  # the error's type and fields (not printed by the CLI)

    def as_json(self) -> dict[str, Any]:
        """`{"run_id", "status", "result", "error", "cost"}`, as the CLI contract prints it."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "cost": self.cost,
        }


MAX_DIGITS = 4000  # what every decoder on the way (json, msgspec) still reads as an integer


def parse_payload(text: str, what: str = "the task") -> bytes:
    """The JSON a user typed (`what` names it in errors), checked; the error says where it
    broke. NaN, Infinity and numbers too large for a float are refused rather than turned into
    null."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite, parse_int=_int)
        return msgspec.json.encode(value)
    except json.JSONDecodeError as exc:
        raise RelayError(
            f"{what} is not valid JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except RecursionError:
        raise RelayError(f"{what} is not valid JSON: it is nested too deeply") from None
    except UnicodeEncodeError as exc:  # a lone surrogate: an escape, or argv that is not UTF-8
        raise RelayError(
            f"{what} is not valid JSON: it holds text that is not valid UTF-8 "
            f"({exc.object[exc.start : exc.start + 1]!a})"
        ) from None
    except ValueError as exc:  # from the parse hooks below
        raise RelayError(f"{what} is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a number has more than {MAX_DIGITS} digits")
    return int(text)


#: the largest limit a run carries (its envelope's headers and journal hold 64-bit integers)
MAX_LIMIT = 2**31 - 1


def check_submission(
    max_hops: object,
    max_steps: object,
    deadline_s: object,
    budget: object,
    timeout_s: object = None,
) -> None:
    """Refuse, before anything is sent, a limit no run can carry (it would be stored, then
    dead-lettered, and its caller would see only a timeout)."""
    _whole("max_hops", max_hops, 1)
    _whole("max_steps", max_steps, 0)
    if budget is not None:
        _whole("budget", budget, 1, 2**63 - 1)
    for field, value in (("deadline_s", deadline_s), ("timeout_s", timeout_s)):
        if value is not None and not (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            raise SubmissionInvalid(field, value, "a finite number of seconds above 0")


def _whole(field: str, value: object, low: int, high: int = MAX_LIMIT) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SubmissionInvalid(field, value, f"a whole number from {low} to {high}")


async def run_store(bus: Bus) -> RunStore:
    return RunStore(await Bucket.open(bus, bus.subjects.bucket("runs")))


async def submit(
    bus: Bus,
    agent: str,
    payload: bytes,
    *,
    sender: str = "user:dev",
    wait: bool = False,
    timeout_s: float = 60.0,
    max_hops: int = 32,
    max_steps: int = 0,
    deadline_s: float | None = None,
    token: str | None = None,
    scopes: list[str] | None = None,
    budget: int | None = None,
    run_id: str | None = None,
) -> RunOutcome:
    """Publish a task for `agent` as a new run; with `wait`, return once the run has ended.

    With `token` (or RELAYBUS_IDENTITY on), the identity service authenticates `sender`
    (user:ID) and stamps the root link of the run's chain, optionally narrowed to `scopes`.

    With `run_id` (the caller's own id, e.g. an order number), submitting is idempotent: if
    that run exists, nothing new starts and its outcome (or `submitted`) is returned; if an
    earlier attempt stopped before the run's first task was taken, the same task is re-sent
    (its id derives from the run id, so JetStream and the worker's journal store it once)."""
    check_name("agent", agent)
    if run_id is not None:
        check_name("run", run_id)
    check_submission(max_hops, max_steps, deadline_s, budget, timeout_s if wait else None)
    identity_on = token is not None or IdentitySettings.of(bus.settings).identity
    if identity_on and token is None:
        raise RelayError("identity is on: publish as a user with --as USER --token TOKEN")
    runs = await run_store(bus)
    if run_id is not None and (existing := await runs.get(run_id)) is not None:
        if identity_on:  # the claimed sender is only a name until its token is checked
            assert token is not None
            await IdentityClient(bus).authenticate(token, sender.removeprefix("user:"))
        if existing.agent != agent or existing.submitted_by != sender:
            raise RunIdTaken(run_id, existing.agent, existing.submitted_by)
        if (await shown_one(bus, existing)).status != "submitted":  # started, or ended
            return await _follow(bus, run_id, agent, wait, timeout_s)
    deadline = time.time() + deadline_s if deadline_s else 0.0
    env = new_envelope(
        kind="task",
        sender=sender,
        recipient=agent,
        payload=payload,
        run_id=run_id,
        max_hops=max_hops,
        max_steps=max_steps,
        deadline=deadline,
    )
    if run_id is not None:
        env = msgspec.structs.replace(env, id=derived_id(run_id, "submit", agent))
    if identity_on:
        assert token is not None
        user = sender.removeprefix("user:")
        root = await IdentityClient(bus).root(
            user,
            token,
            env.run_id,
            agent,
            scopes,
            ttl_s=deadline_s or 3600.0,
            task_id=env.id,
            payload=env.payload,
        )
        env = msgspec.structs.replace(env, chain=(root,))
    if budget is not None:
        level = f"run:{env.run_id}"
        await LedgerClient(bus).set_budget(
            f"budget-{env.run_id}", Budget(level=level, limit=budget)
        )
        env = msgspec.structs.replace(env, budget=level)
    hints: dict[str, str] = {}
    try:
        revision = await runs.create(submitted_record(env.run_id, agent, sender, env.created_at))
        hints[RUN_REVISION_HEADER] = str(revision)  # the worker ends the run without a read
    except RevisionConflict:
        if run_id is None:
            raise
        # another submit of the same run id won the race (or an earlier attempt of this one):
        # re-sending its deterministic task below is stored once
    submitted = Event(
        run_id=env.run_id, kind="submitted", sender=sender, recipient=agent, envelope_id=env.id
    )
    # the event first (a core publish, in order on this connection): a watcher sees the run
    # submitted before the agent's first event about it. A waiter subscribes after it (it
    # need not wake for its own event), still before the task goes out, so it cannot miss
    # the end.
    await bus.publish_event(submitted)
    if not wait:
        await bus.publish(env, hints=hints)
        return RunOutcome(run_id=env.run_id, status="submitted")
    from .waiting import Waiter  # the record says how it ended: no events consumer

    async with Waiter(bus, env.run_id, runs, agent) as waiter:
        await bus.publish(env, hints=hints)
        return await waiter.outcome(timeout_s, read_first=run_id is not None)


class RunIdTaken(RelayError):
    """A caller-chosen run id already names a run of another agent or another submitter."""

    def __init__(self, run_id: str, agent: str, submitted_by: str) -> None:
        super().__init__(
            f"run id {run_id!r} is already a run of {agent!r} submitted by {submitted_by}; "
            "choose another run id (one per unit of work, e.g. your order number)"
        )
        self.run_id = run_id
        self.agent = agent
        self.submitted_by = submitted_by


async def _follow(bus: Bus, run_id: str, agent: str, wait: bool, timeout_s: float) -> RunOutcome:
    """The outcome of a run that already exists (idempotent submit of the same run id)."""
    if not wait:
        return RunOutcome(run_id=run_id, status="submitted")
    from .waiting import await_outcome

    return await await_outcome(bus, run_id, timeout_s)


async def wait_for_run(
    feed: EventFeed, run_id: str, timeout_s: float, agent: str | None = None
) -> RunOutcome:
    """Read `feed` until the run's terminal event, or report a timeout.

    With `agent` (the one the run was submitted to), only the agents that hold the run's line
    can end it: `agent`, then whoever one of them handed the run to. An event that any other
    agent published (its name is the subject's last token) is ignored, so an agent outside the
    run cannot forge its result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    holders = {agent} if agent else None
    while (found := await feed.next_sourced(deadline - loop.time())) is not None:
        event, source = found
        if holders is not None and source and source not in holders:
            if event.kind in ENDED:  # children report their own progress; only this is odd
                log.warning("ignoring a %s event for run %s from %s", event.kind, run_id, source)
            continue
        if holders is not None and event.kind == "handoff" and event.recipient:
            holders.add(event.recipient)
        if event.kind in ENDED:
            return outcome_of(event)
    return RunOutcome(run_id=run_id, status="timeout", error=f"no result within {timeout_s:g}s")


def outcome_of(event: Event) -> RunOutcome:
    result = msgspec.json.decode(event.result) if len(event.result) else None
    error = None
    if event.error is not None:
        error = f"{event.error.type}: {event.error.message}"
    elif event.kind != "completed":
        error = event.detail or event.kind
    status = {"completed": "completed", "cancelled": "cancelled"}.get(event.kind, "failed")
    return RunOutcome(
        run_id=event.run_id,
        status=status,
        result=result,
        error=error,
        cost=event.cost,
        error_info=event.error,
    )


async def has_consumer(bus: Bus, agent: str) -> bool:
    return await consumer_exists(bus, agent_consumer(bus.subjects, agent, bus.settings.ack_wait_s))
