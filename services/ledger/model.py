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
import heapq
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
from msgspec.structs import asdict

from relaybus.bus.errors import PermissionDenied
from relaybus.services.ledger.errors import BudgetExceeded, HoldNotFound, LedgerError, RateLimited

from .ops import (
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

__all__ = ["Budget", "Entry", "LedgerError", "Op", "RateLimit", "State", "apply", "decide"]

MAX_AMOUNT = 2**53  # beyond this JSON numbers stop being exact
MAX_TTL_S = 31 * 24 * 3600.0  # a hold lives at most a month (a card authorization: 7 days)
PAYMENT_LEVEL = "payrun:"  # the budget levels `cap` may narrow


class Entry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the journal stores: a validated op, its body digest (idempotency), its clock."""

    op: Op
    digest: str
    clock: float
    expired: list[str] = []  # holds that expired at this entry's clock


@dataclass
class HeldTransfer:
    """A hold as the ledger keeps it, from placed to captured, voided or expired."""

    id: str
    payer: str
    payee: str
    amount: int
    currency: str
    levels: list[str]
    expires: float
    tags: dict[str, str]
    rate: str = ""
    tokens: int = 0  # reserved
    share: str = ""  # a share of a hold whose home (accounts) is that partition
    shares: list[str] = field(default_factory=list)  # the home's: where its shares are
    placed: float = 0.0  # the ledger clock when it was placed
    undone: bool = False  # a part of a refused split hold, undone
    captured: int = 0
    refunded: int = 0
    state: str = "held"  # held | captured | voided | expired


@dataclass
class Level:
    spent: int = 0
    held: int = 0
    steps: int = 0
    tokens: int = 0  # used (captured)
    tokens_held: int = 0  # reserved by open holds


@dataclass
class State:
    timezone: str = "UTC"
    clock: float = 0.0
    balances: dict[str, int] = field(default_factory=dict)
    currencies: dict[str, str] = field(default_factory=dict)
    holds: dict[str, HeldTransfer] = field(default_factory=dict)
    open_holds: dict[str, HeldTransfer] = field(default_factory=dict)  # only those still held
    budgets: dict[str, Budget] = field(default_factory=dict)
    levels: dict[str, Level] = field(default_factory=dict)
    results: dict[str, tuple[str, dict[str, object]]] = field(
        default_factory=dict
    )  # op id → (digest, result)
    history: list[Entry] = field(default_factory=list)
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    requests: dict[str, list[float]] = field(
        default_factory=dict
    )  # rate key → hold times, last minute
    tokens: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the open holds by expiry (not a field: snapshots leave it out, a restore rebuilds
        # it), so a decision finds lapsed holds without looking at every open one
        self.expiring: list[tuple[float, str]] = [
            (h.expires, h.id) for h in self.open_holds.values()
        ]
        heapq.heapify(self.expiring)

    def lapsed(self, at: float) -> list[str]:
        """The open holds whose time is up at `at`."""
        heap, open_holds = self.expiring, self.open_holds
        while heap and (
            heap[0][1] not in open_holds or open_holds[heap[0][1]].expires != heap[0][0]
        ):
            heapq.heappop(heap)  # settled since, or placed again with another expiry
        if not heap or heap[0][0] > at:
            return []
        return [h.id for h in open_holds.values() if h.expires <= at]

    def period_end(self, level: str, at: float) -> float:
        """When the period of `level`'s budget that holds `at` ends (0: it has no period)."""
        budget = self.budgets.get(level)
        if budget is None or not budget.period:
            return 0.0
        local = datetime.fromtimestamp(at, ZoneInfo(self.timezone))
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if budget.period == "daily":
            return (start + timedelta(days=1)).timestamp()
        first = start.replace(day=1)
        return first.replace(
            year=first.year + first.month // 12, month=first.month % 12 + 1
        ).timestamp()

    def period_key(self, level: str, at: float) -> str:
        budget = self.budgets.get(level)
        if budget is None or not budget.period:
            return level
        local = datetime.fromtimestamp(at, ZoneInfo(self.timezone))
        return f"{level}@{local:%Y-%m-%d}" if budget.period == "daily" else f"{level}@{local:%Y-%m}"


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


_ADDED_EMPTY = ("share", "shares", "undo")
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
        raise LedgerError(f"tokens must be a non-negative integer, got {tokens!r}")


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
            for value in (op.budget.limit, op.budget.max_steps, op.budget.max_tokens):
                if isinstance(value, bool) or value < 0 or value >= MAX_AMOUNT:
                    raise LedgerError(f"budget values must be non-negative integers, got {value!r}")
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
            if not op.limit.key or op.limit.rpm < 0 or op.limit.tpm < 0:
                raise LedgerError("a limit operation needs a key and non-negative rpm/tpm")


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


WINDOW_S = 60.0
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
            state.budgets[op.budget.level] = op.budget
            result.update(level=op.budget.level, limit=op.budget.limit)
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
