"""Submitting a run from Python or the CLI, and waiting for how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import Any

import msgspec

from bus import TERMINAL, Bus, Event, RelayError, new_envelope
from bus.events import event_encoder
from bus.feed import EventFeed
from bus.kv import Bucket
from bus.streams import agent_consumer, consumer_exists
from bus.subjects import check_name
from services.identity.client import IdentityClient
from services.ledger.client import LedgerClient
from services.ledger.model import Budget

from .runs import RunRecord, RunStore

log = logging.getLogger("relaybus.submit")


class RunOutcome(msgspec.Struct, kw_only=True):
    """How a run ended, as `publish --wait --json` prints it."""

    run_id: str
    status: str  # completed | failed | cancelled | timeout | submitted
    result: Any = None
    error: str | None = None
    cost: int = 0

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


def parse_payload(text: str) -> bytes:
    """The JSON a user typed, checked; the error says where it broke. NaN, Infinity and
    numbers too large for a float are refused rather than turned into null."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite, parse_int=_int)
        return msgspec.json.encode(value)
    except json.JSONDecodeError as exc:
        raise RelayError(
            f"the task is not valid JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except RecursionError:
        raise RelayError("the task is not valid JSON: it is nested too deeply") from None
    except UnicodeEncodeError as exc:  # a lone surrogate: an escape, or argv that is not UTF-8
        raise RelayError(
            "the task is not valid JSON: it holds text that is not valid UTF-8 "
            f"({exc.object[exc.start : exc.start + 1]!a})"
        ) from None
    except ValueError as exc:  # from the parse hooks below
        raise RelayError(f"the task is not valid JSON: {exc}") from None


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
) -> RunOutcome:
    """Publish a task for `agent` as a new run; with `wait`, return once the run has ended.

    With `token` (or RELAYBUS_IDENTITY on), the identity service authenticates `sender`
    (user:ID) and stamps the root link of the run's chain, optionally narrowed to `scopes`."""
    check_name("agent", agent)
    if max_hops < 1 or max_steps < 0:
        raise RelayError("max_hops must be >= 1 and max_steps >= 0")
    deadline = time.time() + deadline_s if deadline_s else 0.0
    env = new_envelope(
        kind="task",
        sender=sender,
        recipient=agent,
        payload=payload,
        max_hops=max_hops,
        max_steps=max_steps,
        deadline=deadline,
    )
    if token is not None or bus.settings.identity:
        if token is None:
            raise RelayError("identity is on: publish as a user with --as USER --token TOKEN")
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
        if budget <= 0:
            raise RelayError(f"--budget must be a positive number of micro-units, got {budget}")
        level = f"run:{env.run_id}"
        await LedgerClient(bus).set_budget(
            f"budget-{env.run_id}", Budget(level=level, limit=budget)
        )
        env = msgspec.structs.replace(env, budget=level)
    runs = await run_store(bus)
    await runs.create(
        RunRecord(run_id=env.run_id, agent=agent, submitted_by=sender, started=env.created_at)
    )
    async with contextlib.AsyncExitStack() as stack:
        feed = (
            await stack.enter_async_context(EventFeed(bus, env.run_id, replay=True))
            if wait
            else None
        )
        await bus.publish(env)
        submitted = Event(
            run_id=env.run_id, kind="submitted", sender=sender, recipient=agent, envelope_id=env.id
        )
        await bus.publish_bytes(
            bus.subjects.event(env.run_id, "submitted"), event_encoder.encode(submitted)
        )
        if feed is None:
            return RunOutcome(run_id=env.run_id, status="submitted")
        return await wait_for_run(feed, env.run_id, timeout_s, agent)
    raise AssertionError("unreachable")


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
            log.warning("ignoring a %s event for run %s from %s", event.kind, run_id, source)
            continue
        if holders is not None and event.kind == "handoff" and event.recipient:
            holders.add(event.recipient)
        if event.kind in TERMINAL:
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
        run_id=event.run_id, status=status, result=result, error=error, cost=event.cost
    )


async def has_consumer(bus: Bus, agent: str) -> bool:
    return await consumer_exists(bus, agent_consumer(bus.subjects, agent, bus.settings.ack_wait_s))
