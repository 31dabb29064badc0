"""Graceful degradation: what a task does when a budget stops it (`Agent.on_budget_exceeded`).

- `fail`: the task fails with BudgetExceeded (the default).
- `park`: it waits for a person: raise the budget, then `relaybus approve RUN --signal budget-N`.
- `retry`: it is tried again after `Agent.budget_retry_s` (holds of other runs may have been
  released, or someone raised the budget), within the agent's retry policy.
- `queue`: it sleeps on a durable timer until the exceeded budget's period ends (a `daily` or
  `monthly` budget resets by itself), then goes on; a budget without a period is parked.

Before any of these, an LLM call whose model has a cheaper one in `Agent.cheaper_models` is
made with that one (`ctx.llm`; a `degraded` event says so). Rate limits are retried after the
wait the ledger names. Each answer shows in the run's events: `parked`, `retried`, `queued`,
`degraded`.
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from relaybus.bus import ErrorInfo, Retry
from relaybus.bus.envelope import derived_id
from relaybus.services.ledger.errors import BudgetExceeded

from .journal import Fenced, Journal, Wait

if TYPE_CHECKING:
    from .context import Context
    from .execution import Execution
    from .worker import Worker

MAX_QUEUE_S = 400 * 86400.0  # a monthly budget resets within 31 days; past this, something is off


async def on_budget_exceeded(
    worker: Worker, ctx: Context, ex: Execution, exc: BudgetExceeded
) -> str:
    """Apply the agent's policy; returns the task's outcome, "" to fail it."""
    policy = worker.agent.on_budget_exceeded
    if policy == "queue" and _worth_queueing(ex, exc):
        await _queue(worker, ex, exc)
        return "queued"
    if policy in ("park", "queue"):
        await _park(worker, ctx, ex, exc)
        return "parked"
    if policy == "retry":
        env = ex.envelope
        await ex.flush()
        await worker.costs.settle_leases(env.run_id)
        with contextlib.suppress(Fenced):  # the next attempt is a retry, not a takeover
            await ex.release()
        delay = worker.agent.budget_retry_s
        await worker.emit_event(
            env,
            "retried",
            detail=f"budget: trying again in {delay:g}s",
            error=ErrorInfo.from_exception(exc),
        )
        raise Retry(f"{exc}; trying again in {delay:g}s", delay_s=delay)
    return ""


def _worth_queueing(ex: Execution, exc: BudgetExceeded) -> bool:
    """Whether waiting for the budget's next period can help: it has one, within reason, and
    this task did not already wake from such a wait still over the budget (a call that asks
    more than a whole period allows would queue for ever: it is parked for a person)."""
    if not math.isfinite(exc.resets_at) or not 0 < exc.resets_at - time.time() < MAX_QUEUE_S:
        return False
    fired = set(ex.journal.timers)
    woken = (_reset_timer(ex, n) in fired for n in range(1, len(ex.journal.timers) + 1))
    return not any(woken)


def _reset_timer(ex: Execution, n: int) -> str:
    return derived_id(ex.envelope.id, "budget-reset", str(n))


async def _queue(worker: Worker, ex: Execution, exc: BudgetExceeded) -> None:
    """Sleep on a durable timer until the budget's period ends; the replay then charges again.
    The timer is armed before the task suspends: a crash between the two leaves a timer for a
    task that is still running (harmless), never a suspended task without one."""
    env = ex.envelope
    await ex.flush()
    await worker.costs.settle_leases(env.run_id)
    due = exc.resets_at + 1.0  # a second into the new period, clear of clock skew
    timer = _reset_timer(ex, len(ex.journal.timers) + 1)
    await worker.start_timer(env, timer, due)

    def sleep(journal: Journal) -> None:
        journal.waiting = Wait(timer=timer)
        journal.status = "running" if journal.satisfied() else "suspended"
        if journal.status == "running":
            journal.waiting = None

    await ex.mutate(sleep)
    resets = datetime.fromtimestamp(exc.resets_at, UTC).isoformat(timespec="seconds")
    await worker.emit_event(
        env,
        "queued",
        detail=f"{exc}; waits until budget {exc.level} resets at {resets}",
    )


async def _park(worker: Worker, ctx: Context, ex: Execution, exc: BudgetExceeded) -> None:
    """Suspend the task until signal `budget-N` arrives; the replay then retries the charge."""
    env = ex.envelope
    await ex.flush()
    await worker.costs.settle_leases(env.run_id)
    parks = sum(1 for name in ex.journal.signals if name.startswith("budget-"))
    signal = f"budget-{parks + 1}"
    data = await worker.signal_or_register(ctx, signal)
    wait = Wait(signal=signal)

    def park(journal: Journal) -> None:
        if data is not None:
            journal.signals.setdefault(signal, data)
        journal.waiting = wait
        journal.status = "running" if journal.satisfied() else "suspended"
        if journal.status == "running":
            journal.waiting = None

    journal = await ex.mutate(park)
    detail = f"{exc}; raise the budget, then `relaybus approve {env.run_id} --signal {signal}`"
    await worker.emit_event(env, "parked", detail=detail)
    if journal.status == "running":  # the signal was already there: go on at once
        raise Retry("budget signal already received", delay_s=0.1)
