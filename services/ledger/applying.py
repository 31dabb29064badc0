"""`apply(state, entry)`: a stored journal entry applied to the ledger's state (the service
appends before it applies, and a restart rebuilds the state by applying the journal)."""

from __future__ import annotations

import heapq

import msgspec

from .ops import Budget, Cap, Capture, Hold, Refund, SetBudget, SetRateLimit, Tick, Transfer, Void
from .state import WINDOW_S, Entry, HeldTransfer, Level, State


def apply(state: State, entry: Entry) -> dict[str, object]:
    """Apply a stored entry; returns the operation's result."""
    op, at = entry.op, entry.clock
    state.clock = max(state.clock, at)
    for hold_id in entry.expired:
        _release(state, state.holds[hold_id], "expired")
    result: dict[str, object] = {"id": op.id, "kind": op.kind}
    match op:
        case Hold():
            keys = [state.period_key(level, at) for level in op.levels]
            hold = HeldTransfer(
                id=op.id,
                payer=op.payer,
                payee=op.payee,
                amount=op.amount,
                currency=op.currency,
                levels=keys,
                expires=at + op.ttl_s,
                tags=dict(op.tags),
                rate=op.rate,
                tokens=op.tokens,
                share=op.share,
                shares=list(op.shares),
                placed=at,
            )
            if op.rate:
                times = [t for t in state.requests.get(op.rate, []) if t > at - WINDOW_S]
                state.requests[op.rate] = [*times, at]
            state.holds[op.id] = hold
            state.open_holds[op.id] = hold
            heapq.heappush(state.expiring, (hold.expires, op.id))
            for account in () if op.share else (op.payer, op.payee):
                state.currencies.setdefault(account, op.currency)
                state.balances.setdefault(account, 0)
            for key in keys:
                level = state.levels.setdefault(key, Level())
                level.held += op.amount
                level.tokens_held += op.tokens
                level.steps += 1
            result.update(hold=op.id, amount=op.amount, tokens=op.tokens, expires=hold.expires)
            _parts(result, hold)
        case Capture():
            hold = state.holds[op.transfer]
            if hold.state == "held":
                _release(state, hold, "captured")
            hold.state = "captured"  # a lapsed share too: its reservation was released then
            hold.captured = op.amount
            if not hold.share:
                _move(state, hold.payer, hold.payee, op.amount)
            for key in hold.levels:
                level = state.levels.setdefault(key, Level())
                level.spent += op.amount
                level.tokens += op.tokens
            if hold.rate and op.tokens:
                used = [(t, n) for t, n in state.tokens.get(hold.rate, []) if t > at - WINDOW_S]
                state.tokens[hold.rate] = [*used, (at, op.tokens)]
            # the run's spend after this capture, and where the capture stands in the
            # partition's order: a task that is its run's only spender knows the run's cost
            # from its last capture, without asking (agents/charging.py). Only `run:` levels:
            # another level's spend is an operator's to read (`levels`)
            after = len(state.history)
            spent = {
                key: {"spent": state.levels[key].spent, "after": after}
                for key in hold.levels
                if key.startswith("run:")
            }
            result.update(transfer=hold.id, captured=op.amount)
            if spent:
                result["levels"] = spent
            _parts(result, hold)
        case Void():
            hold = state.holds[op.transfer]
            if hold.state == "held":
                _release(state, hold, "voided")
            result.update(transfer=op.transfer, voided=True)
            if op.undo:
                _undo(state, hold)
            _parts(result, hold)
        case Refund():
            hold = state.holds[op.transfer]
            hold.refunded += op.amount
            if not hold.share:
                _move(state, hold.payee, hold.payer, op.amount)
            for key in hold.levels:
                state.levels.setdefault(key, Level()).spent -= op.amount
            result.update(
                transfer=hold.id, refunded=op.amount, refundable=hold.captured - hold.refunded
            )
            _parts(result, hold)
        case SetBudget():
            budget = op.budget
            if op.only:  # just the fields named, on the budget in force (or none: no limits)
                in_force = state.budgets.get(budget.level) or Budget(level=budget.level)
                budget = msgspec.structs.replace(
                    in_force, **{name: getattr(op.budget, name) for name in op.only}
                )
            state.budgets[budget.level] = budget
            result.update(
                level=budget.level,
                limit=budget.limit,
                period=budget.period,
                max_steps=budget.max_steps,
                max_tokens=budget.max_tokens,
            )
        case Cap():  # narrows only: a cap above the one in force changes nothing
            current = state.budgets.get(op.level)
            narrowed = current is None or not current.limit or op.amount < current.limit
            if narrowed:
                base = current or Budget(level=op.level)
                state.budgets[op.level] = msgspec.structs.replace(base, limit=op.amount)
            result.update(level=op.level, limit=state.budgets[op.level].limit, narrowed=narrowed)
        case Transfer():
            _move(state, op.payer, op.payee, op.amount)
            result.update(amount=op.amount)
        case Tick():
            result.update(expired=entry.expired)
        case SetRateLimit():
            state.rate_limits[op.limit.key] = op.limit
            result.update(key=op.limit.key, rpm=op.limit.rpm, tpm=op.limit.tpm)
    state.results[op.id] = (entry.digest, result)
    state.history.append(entry)
    return result


def _undo(state: State, hold: HeldTransfer) -> None:
    """A part of a refused split hold: as if never placed. Its step and rate-limit request no
    longer count, and a retry of the hold's id is decided afresh."""
    state.results.pop(hold.id, None)
    if hold.undone:
        return
    hold.undone = True
    for key in hold.levels:
        state.levels.setdefault(key, Level()).steps -= 1
    times = state.requests.get(hold.rate, [])
    if hold.placed in times:
        times.remove(hold.placed)


def _parts(result: dict[str, object], hold: HeldTransfer) -> None:
    """A partitioned hold's result names its other parts: a home its shares, a share its home."""
    if hold.shares:
        result["shares"] = list(hold.shares)
    if hold.share:
        result["share"] = hold.share


def _release(state: State, hold: HeldTransfer, new_state: str) -> None:
    for key in hold.levels:
        level = state.levels.setdefault(key, Level())
        level.held -= hold.amount
        level.tokens_held -= hold.tokens
    hold.state = new_state
    state.open_holds.pop(hold.id, None)


def _move(state: State, payer: str, payee: str, amount: int) -> None:
    state.balances[payer] = state.balances.get(payer, 0) - amount
    state.balances[payee] = state.balances.get(payee, 0) + amount
