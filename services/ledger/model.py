"""The ledger's state machine: deterministic, integer micro-units, no I/O.

`decide(state, op, now)` validates an operation against the current state and returns the
journal entry to append (or raises LedgerError, changing nothing); `apply(state, entry)` applies
a stored entry. The service appends before applying and rebuilds by applying the journal.

Time is the ledger's own: `now` comes from the service's clock (injected in tests), never from a
request, and the ledger clock never goes backwards (an earlier `now` is taken as the clock).

Double entry: a capture moves money from the payer account to the payee account (the sum of
all balances stays zero). Budgets are limits on levels (user per period, run, agent): a hold
reserves its amount — and its tokens — at every level at once, or fails as a whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import msgspec
from msgspec.structs import asdict

from relaybus.bus.errors import PermissionDenied
from relaybus.services.ledger.errors import BudgetExceeded, HoldNotFound, LedgerError, RateLimited

from .applying import apply
from .ops import (
    BUDGET_FIELDS,
    Budget,
    Cap,
    Capture,
    Hold,
    Op,
    RateLimit,
    Refund,
    SetBudget,
    SetRateLimit,
    Tick,
    Transfer,
    Void,
)
from .state import (
    MAX_AMOUNT,
    MAX_TTL_S,
    PAYMENT_LEVEL,
    WINDOW_S,
    Entry,
    HeldTransfer,
    Level,
    State,
)

__all__ = [
    "MAX_AMOUNT",
    "MAX_TTL_S",
    "PAYMENT_LEVEL",
    "Budget",
    "Entry",
    "HeldTransfer",
    "LedgerError",
    "Level",
    "Op",
    "RateLimit",
    "State",
    "apply",
    "decide",
    "digest",
]


def digest(op: Op) -> str:
    """The op's body fingerprint for idempotency: its kind and every field, keys sorted. Not the
    wire encoding: `omit_defaults` drops a default string only when it is the very same object,
    so the same op decoded from a journal and built in code would encode differently."""
    # a flat op's fields are already plain values: its shallow dict is its canonical form
    fields = _canonical(op) if isinstance(op, SetBudget | SetRateLimit) else asdict(op)
    body = {"kind": op.kind, **fields}  # type: ignore[dict-item]
    for added in _ADDED_EMPTY:  # fields added later: absent while empty, so digests stay valid
        if body.get(added) in ("", [], False):
            body.pop(added)
    return hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()


_ADDED_EMPTY = ("share", "shares", "undo", "only")
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _canonical(value: object) -> object:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, msgspec.Struct):
        fields = ((f, getattr(value, f)) for f in value.__struct_fields__)
        return {f: v if type(v) in _PLAIN else _canonical(v) for f, v in fields}
    if isinstance(value, dict):
        return {k: v if type(v) in _PLAIN else _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _PLAIN else _canonical(v) for v in value]
    return value


def _amount(amount: int, allow_zero: bool = False) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise LedgerError(f"amount must be integer micro-units, got {amount!r}")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise LedgerError(f"amount must be positive, got {amount}")
    if amount >= MAX_AMOUNT:
        raise LedgerError(f"amount {amount} overflows the ledger's range (< 2**53 micro-units)")


def _tokens(tokens: int) -> None:
    if isinstance(tokens, bool) or not 0 <= tokens < MAX_AMOUNT:
        raise LedgerError(
            f"tokens must be a whole number from 0 to {MAX_AMOUNT - 1}, got {tokens!r}"
        )


def decide(state: State, op: Op, now: float) -> Entry | dict[str, object]:
    """The entry to append for `op`, or the recorded result of an earlier op with the same id."""
    if not op.id:
        raise LedgerError("every ledger operation needs an id (idempotency key)")
    body = digest(op)
    if op.id in state.results:
        first, result = state.results[op.id]
        if first != body:
            refers = getattr(op, "transfer", "")
            raise LedgerError(
                f"operation id {op.id} ({op.kind}"
                + (f" of {refers}" if refers else "")
                + ") was already used with a different body; "
                "an idempotent retry must send exactly the same operation"
            )
        held = state.holds.get(op.id) if isinstance(op, Hold) else None
        if held is not None and held.state != "held":  # a retried hold learns it is gone
            return {**result, "state": held.state}
        return result
    at = max(now, state.clock)  # the ledger's clock: the service's, never a request's
    lapsed = state.lapsed(at)
    # every lapsed hold counts as expired in this decision; the entry releases a bounded number
    # of them (the rest in the entries after it), so no flood of short holds can make one entry
    # outgrow a journal message
    probe = Entry(op=op, digest=body, clock=at, expired=lapsed[:MAX_EXPIRED_PER_ENTRY])
    _validate(state, op, at, set(lapsed))
    return probe


def _validate(state: State, op: Op, at: float, expired: Collection[str]) -> None:
    match op:
        case Hold():
            _validate_hold(state, op, at, expired)
        case Capture():
            hold = _open_hold(state, op.transfer, expired, lapsed_share=True)
            _tokens(op.tokens)
            _amount(op.amount, allow_zero=True)
            if op.amount > hold.amount:
                raise LedgerError(
                    f"capture of {op.amount} is above the {hold.amount} held by {hold.id}"
                )
            if op.currency != hold.currency:
                raise LedgerError(f"capture in {op.currency}, but {hold.id} holds {hold.currency}")
        case Void(undo=True):
            undone = state.holds.get(op.transfer)
            if undone is None:
                raise HoldNotFound(f"no hold {op.transfer!r}")
            if undone.state == "captured":
                raise LedgerError(f"hold {op.transfer} is captured; it cannot be undone")
        case Void():
            _open_hold(state, op.transfer, expired, lapsed_share=True)
        case Refund():
            _amount(op.amount)
            refundable = state.holds.get(op.transfer)
            if refundable is None or refundable.state != "captured":
                raise LedgerError(f"no captured transfer {op.transfer!r} to refund")
            left = refundable.captured - refundable.refunded
            if op.amount > left:
                raise LedgerError(
                    f"refund of {op.amount} is above the {left} left to refund on {refundable.id}"
                )
        case SetBudget():
            if not op.budget.level:
                raise LedgerError("a budget operation needs a budget with a level")
            for name in ("limit", "max_steps", "max_tokens"):
                value = getattr(op.budget, name)
                if isinstance(value, bool) or not 0 <= value < MAX_AMOUNT:
                    raise LedgerError(
                        f"budget {name} must be a whole number from 0 (none) to {MAX_AMOUNT - 1},"
                        f" got {value!r}"
                    )
            if unknown := set(op.only) - set(BUDGET_FIELDS):
                raise LedgerError(
                    f"a budget operation sets only {', '.join(BUDGET_FIELDS)}, not {sorted(unknown)}"
                )
        case Cap():
            _amount(op.amount)
            if not op.level.startswith(PAYMENT_LEVEL) or op.level == PAYMENT_LEVEL:
                raise PermissionDenied(
                    f"`cap` narrows a run's payment level ({PAYMENT_LEVEL}RUN…), not {op.level!r}; "
                    "other budgets are set by an operator (`relaybus ledger budget`)"
                )
        case Transfer():
            _amount(op.amount)
            if not op.payer or not op.payee or op.payer == op.payee:
                raise LedgerError("a transfer needs two different accounts")
        case Tick():
            pass
        case SetRateLimit():
            if not op.limit.key:
                raise LedgerError("a limit operation needs a key, e.g. agent:research/tool:search")
            for name in ("rpm", "tpm"):
                value = getattr(op.limit, name)
                if isinstance(value, bool) or not 0 <= value < MAX_AMOUNT:
                    raise LedgerError(
                        f"{name} must be a whole number from 0 (none) to {MAX_AMOUNT - 1},"
                        f" got {value!r}"
                    )


def _validate_hold(state: State, op: Hold, at: float, expired: Collection[str]) -> None:
    _tokens(op.tokens)
    _amount(op.amount, allow_zero=op.tokens > 0)  # an unpriced LLM call reserves tokens only
    if not 0 < op.ttl_s <= MAX_TTL_S:  # NaN too: a hold that never expires
        raise LedgerError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds, got {op.ttl_s}")
    if not op.payer or not op.payee:
        raise LedgerError("a hold needs a payer and a payee account")
    for account in () if op.share else (op.payer, op.payee):
        have = state.currencies.get(account)
        if have is not None and have != op.currency:
            raise LedgerError(f"account {account} is in {have}, not {op.currency}")
    for level in op.levels:
        budget = state.budgets.get(level)
        if budget is None:
            continue
        key = state.period_key(level, at)
        try:
            _check_budget(key, budget, state.levels.get(key, Level()), op, expired, state)
        except BudgetExceeded as exc:
            raise BudgetExceeded(str(exc), key, state.period_end(level, at)) from None
    _check_rate(state, op.rate, at)


MAX_EXPIRED_PER_ENTRY = 256


def _check_budget(
    key: str, budget: Budget, used: Level, op: Hold, expired: Collection[str], state: State
) -> None:
    lapsed = [
        hold
        for hold in (state.open_holds.get(hold_id) for hold_id in expired)
        if hold is not None and key in hold.levels
    ]
    held = used.held - sum(h.amount for h in lapsed)
    if budget.limit and used.spent + held + op.amount > budget.limit:
        left = budget.limit - used.spent - held
        raise BudgetExceeded(
            f"budget {key} would go over: {op.amount} asked, {max(left, 0)} of {budget.limit} left"
        )
    if budget.max_steps and used.steps + 1 > budget.max_steps:
        raise BudgetExceeded(f"budget {key}: step limit {budget.max_steps} reached")
    if budget.max_tokens:
        _check_tokens(key, budget.max_tokens, used, lapsed, op.tokens)


def _check_tokens(
    key: str, limit: int, used: Level, lapsed: list[HeldTransfer], asked: int
) -> None:
    """Used plus reserved tokens may not pass `limit`: parallel LLM calls each reserve theirs."""
    if used.tokens >= limit:
        raise BudgetExceeded(f"budget {key}: token limit {limit} reached")
    reserved = used.tokens_held - sum(h.tokens for h in lapsed)
    if used.tokens + reserved + asked > limit:
        left = limit - used.tokens - reserved
        raise BudgetExceeded(
            f"budget {key} would go over its token limit: {asked} tokens asked, "
            f"{max(left, 0)} of {limit} left ({reserved} reserved by calls in flight)"
        )


def _check_rate(state: State, key: str, at: float) -> None:
    limit = state.rate_limits.get(key) if key else None
    if limit is None:
        return
    recent = [t for t in state.requests.get(key, []) if t > at - WINDOW_S]
    if limit.rpm and len(recent) + 1 > limit.rpm:
        wait = recent[0] + WINDOW_S - at
        raise RateLimited(
            f"rate limit {key}: {limit.rpm} requests per minute; retry in {wait:.1f}s", wait
        )
    used = [(t, n) for t, n in state.tokens.get(key, []) if t > at - WINDOW_S]
    if limit.tpm and sum(n for _, n in used) >= limit.tpm:
        wait = used[0][0] + WINDOW_S - at
        raise RateLimited(
            f"rate limit {key}: {limit.tpm} tokens per minute; retry in {wait:.1f}s", wait
        )


def _open_hold(
    state: State, transfer: str, expired: Collection[str], *, lapsed_share: bool = False
) -> HeldTransfer:
    """The hold, if it can still be captured or voided. A share of a partitioned hold that
    lapsed still can (`lapsed_share`): its home decides, and the home's capture must reach
    every level, whatever the two writers' clocks said."""
    hold = state.holds.get(transfer)
    if hold is None:
        raise HoldNotFound(f"no hold {transfer!r}")
    lapsed = hold.state == "expired" or transfer in expired
    if lapsed_share and hold.share and lapsed:
        return hold
    if hold.state != "held" or transfer in expired:
        state_name = "expired" if transfer in expired else hold.state
        raise LedgerError(
            f"hold {transfer} is {state_name}; it can no longer be captured or voided"
        )
    return hold
