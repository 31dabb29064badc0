"""The ledger's state: what a replay of the journal builds (accounts, holds, budget levels,
rate windows, the results kept for idempotency), and the entry the journal stores."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec

from .ops import Budget, Op, RateLimit

MAX_AMOUNT = 2**53  # beyond this JSON numbers stop being exact
MAX_TTL_S = 31 * 24 * 3600.0  # a hold lives at most a month (a card authorization: 7 days)
PAYMENT_LEVEL = "payrun:"  # the budget levels `cap` may narrow
WINDOW_S = 60.0  # a rate limit's window


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
