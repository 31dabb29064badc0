"""A run's numbers as every console page shows them — one function, so the runs list and the
run page cannot disagree (neither while the run waits nor after it ended).

- steps: the tool calls, `ctx.step`s and LLM calls of every task of the run (what `relaybus
  trace` lists), read from the run's events; a run whose events are gone keeps its record's.
- attempts, tokens: summed over the same tasks.
- cost: what the ledger captured for the run (`run:RUN`, the source of truth, also while the
  run waits); without a ledger, what the events add up to (or the record's, events gone).
- failures: the run record's count of failed attempts and tasks.
- duration: the run record's (submitted → ended), None while it runs.
- waiting_for: the signals the run waits for and nobody sent yet — nothing once it ended.
"""

from __future__ import annotations

from typing import Any

from relaybus.services.runs.state import ENDED, RunRecord

from ..runtree import RunTree

# the numbers of a run that ended no longer change: the run row keeps them
FIXED = ("steps", "attempts", "tasks", "input_tokens", "output_tokens", "cost", "cost_check")


def figures(record: RunRecord | None, tree: RunTree) -> dict[str, Any]:
    """steps, attempts, tasks, tokens, cost and its check, for `run_row`."""
    tasks = tree.tasks()
    tokens_in, tokens_out = tree.tokens
    if tasks or record is None:
        steps = sum(len(t.calls) for t in tasks)
        fallback = tree.event_cost
    else:  # its events are gone (the stream's retention): what the record kept
        steps, fallback = record.steps, record.cost
    cost = tree.ledger_cost if tree.ledger_cost is not None else fallback
    if tasks:
        check = tree.cost_check()
    else:
        check = "from the ledger" if tree.ledger_cost is not None else "from the run record"
    return {
        "steps": steps,
        "attempts": sum(t.attempts for t in tasks),
        "tasks": len(tasks),
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost": cost,
        "cost_check": check,
    }


def run_row(
    record: RunRecord | None, run_id: str, numbers: dict[str, Any], tree: RunTree | None = None
) -> dict[str, Any]:
    """The run as the runs list and the run page show it: the record's summary (status, user,
    result, error, failures, duration, what it waits for) with `numbers` from `figures`. A run
    published without `submit` has no record: its status and times come from its `tree`."""
    if record is not None:
        row = {**record.summary(), "submitted_by": record.submitted_by}
        row["waiting_for"] = [] if record.status in ENDED else record.pending_signals()
    else:
        ended = tree.ended if tree else 0.0
        started = tree.started if tree else 0.0
        row = {
            "run_id": run_id,
            "agent": "",
            "status": tree.status if tree else "running",
            "result": None,
            "error": None,
            "traceback": None,
            "hops": 0,
            "failures": 0,
            "started": started,
            "ended": ended or None,
            "duration_s": round(ended - started, 3) if ended else None,
            "waiting_for": [],
            "submitted_by": "",
        }
    row.update({key: numbers[key] for key in FIXED})
    return row
