"""Read-only ledger queries: balances, holds, budgets, statements, cost allocation.

`run_cost` is the one an agent process sends (messages.AGENT_OPS); the others read across
accounts and users and are for operators, services and the console."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from relaybus.services.ledger.errors import LedgerError

from .model import PAYMENT_LEVEL, Level, State
from .ops import Capture, Refund


def balance(state: State, req: dict[str, Any]) -> Any:
    account = req.get("account")
    if account:
        return {
            "account": account,
            "balance": state.balances.get(account, 0),
            "currency": state.currencies.get(account, ""),
        }
    return [
        {"account": a, "balance": b, "currency": state.currencies.get(a, "")}
        for a, b in sorted(state.balances.items())
    ]


def holds(state: State, req: dict[str, Any]) -> Any:
    return [
        {
            "id": h.id,
            "payer": h.payer,
            "payee": h.payee,
            "amount": h.amount,
            "expires": h.expires,
            "tags": h.tags,
        }
        for h in state.open_holds.values()
        if not h.share  # a partitioned hold is listed once, by its home
    ]


def levels(state: State, req: dict[str, Any]) -> Any:
    """Spent / held / steps / tokens per budget level, with the limits."""
    prefix = req.get("level", "")
    active = dict(state.levels)
    for name in state.budgets:  # a budget nothing has spent against yet is listed too
        if not any(key == name or key.startswith(f"{name}@") for key in state.levels):
            active[name] = Level()
    out = []
    for key, level in sorted(active.items()):
        if prefix and not key.startswith(prefix):
            continue
        budget = state.budgets.get(key.split("@", 1)[0])
        out.append(
            {
                "level": key,
                "spent": level.spent,
                "held": level.held,
                "steps": level.steps,
                "tokens": level.tokens,
                "tokens_held": level.tokens_held,
                "limit": budget.limit if budget else 0,
                "period": budget.period if budget else "",
                "max_steps": budget.max_steps if budget else 0,
                "max_tokens": budget.max_tokens if budget else 0,
                "remaining": (budget.limit - level.spent - level.held)
                if budget and budget.limit
                else None,
            }
        )
    return out


def statement(state: State, req: dict[str, Any]) -> Any:
    """A user's captures and refunds in a period (`2026-11` or `2026-11-25`), with totals."""
    user, period = req.get("user"), req.get("period", "")
    if not user:
        raise LedgerError("a statement needs a user")
    zone = ZoneInfo(state.timezone)
    lines: list[dict[str, Any]] = []
    for entry in state.history:
        op = entry.op
        if not isinstance(op, (Capture, Refund)) or not op.amount:
            continue  # a capture of nothing (an unpriced model's tokens) is no statement line
        hold = state.holds.get(op.transfer)
        if hold is None or hold.share or hold.payer != f"user:{user}":
            continue
        when = datetime.fromtimestamp(entry.clock, zone).strftime("%Y-%m-%d")
        if period and not when.startswith(period):
            continue
        amount = op.amount if isinstance(op, Capture) else -op.amount
        lines.append(
            {
                **hold.tags,  # first: a tag never hides what the ledger itself says
                "time": entry.clock,
                "kind": op.kind,
                "transfer": hold.id,
                "amount": amount,
                "currency": hold.currency,
                "category": "payment" if hold.payee.startswith("payee:") else "agent cost",
            }
        )
    total = sum(line["amount"] for line in lines)
    totals = {"agent_costs": 0, "payments": 0, "refunds": 0}
    for line in lines:
        if line["kind"] == "refund":
            totals["refunds"] += -line["amount"]
        elif line["category"] == "payment":
            totals["payments"] += line["amount"]
        else:
            totals["agent_costs"] += line["amount"]
    allocation: dict[str, dict[str, int]] = {}
    for line in lines:
        for dim in ("run", "agent", "tool", "model"):
            if dim in line:
                bucket = allocation.setdefault(dim, {})
                bucket[line[dim]] = bucket.get(line[dim], 0) + line["amount"]
    return {
        "user": user,
        "period": period,
        "total": total,
        "totals": totals,
        "lines": lines,
        "by": allocation,
    }


def run_cost(state: State, req: dict[str, Any]) -> Any:
    """One run's cost, steps and tokens (`run:RUN`) and its payments (`payrun:RUN`): spent
    (captured, net of refunds) and held (reserved by holds still open), in micro-units."""
    run = req.get("run")
    if not run:
        raise LedgerError('run_cost needs a run id: {"run": "RUN"}')
    cost = state.levels.get(f"run:{run}", Level())
    paid = state.levels.get(f"{PAYMENT_LEVEL}{run}", Level())
    return {
        "run": run,
        "spent": cost.spent,
        "held": cost.held,
        "steps": cost.steps,
        "tokens": cost.tokens,
        "tokens_held": cost.tokens_held,
        "payments": {"spent": paid.spent, "held": paid.held},
    }


QUERIES: dict[str, Callable[[State, dict[str, Any]], Any]] = {
    "balance": balance,
    "holds": holds,
    "levels": levels,
    "statement": statement,
    "run_cost": run_cost,
    "ping": lambda state, req: {"clock": state.clock},
}
