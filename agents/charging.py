"""What costed work costs: ledger holds and captures (or leases), circuit breakers, run cost."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from relaybus.bus import Bus, Retry
from relaybus.bus.envelope import derived_id
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import RateLimited
from relaybus.services.ledger.lease import Lease
from relaybus.services.ledger.prices import PriceTable
from relaybus.services.ledger.settings import LedgerSettings

from .breaker import Breaker

RATE_WAIT_S = 75.0  # a rate limit waited out in place at most this long (a window is 60 s)
RATE_PAUSE_MIN_S = 0.1

if TYPE_CHECKING:
    from .context import Context


class PendingCapture(msgspec.Struct, kw_only=True, frozen=True):
    """A capture owed to the ledger for work that already ran. It is journaled with the work's
    result before it is sent, so a crash or a ledger outage in between never runs the work
    again: the replay sends the same (idempotent) capture instead."""

    op_id: str
    hold_id: str
    amount: int
    currency: str
    tokens: int = 0
    tags: dict[str, str] = {}


@dataclass
class Bill:
    """A costed call's usage, filled in by the caller; `cost` and `pending` by the charge."""

    input_tokens: int = 0
    output_tokens: int = 0
    units: float | None = None  # what a metered tool used (ctx.meter)
    cost: int = 0
    pending: PendingCapture | None = None


def _used(tool: Any, price: int, held: int, bill: Bill) -> int:
    """What a call costs: its price, or for a metered tool what it used (at most the hold; all
    of it when the tool reported nothing)."""
    if tool.max_units is None or bill.units is None:
        return held
    return min(held, math.ceil(price * max(0.0, bill.units)))


class RunSpend(msgspec.Struct, frozen=True):
    """A run's spend after one capture, and that capture's place in the ledger's order."""

    spent: int
    after: int

    def later(self, other: RunSpend | None) -> RunSpend:
        return self if other is None or self.after >= other.after else other


class Costs:
    """One agent process's view of the ledger and of its tools' health."""

    def __init__(
        self, bus: Bus, agent: str, ledger: LedgerClient | None, prices: PriceTable
    ) -> None:
        self.bus = bus
        self.agent = agent
        self.ledger = ledger
        self.prices = prices
        self.ledger_settings = LedgerSettings.of(bus.settings)
        self._leases: dict[tuple[str, str, str], Lease] = {}
        self._breakers: dict[str, Breaker] = {}

    def lease(self, ctx: Context, user: str, tool: str) -> Lease:
        key = (ctx.run_id, user, tool)
        lease = self._leases.get(key)
        if lease is None:
            assert self.ledger is not None
            lease = Lease(
                self.ledger,
                payer=f"user:{user}",
                payee=f"tool:{tool}",
                levels=[f"user:{user}", f"run:{ctx.run_id}", f"agent:{self.agent}"],
                chunk=self.ledger_settings.ledger_lease,
                currency=self.ledger_settings.ledger_currency,
                tags={"run": ctx.run_id, "agent": self.agent, "tool": tool},
            )
            self._leases[key] = lease
        return lease

    def price(self, tool: Any) -> int:
        """What one call of `tool` is charged (0 without a ledger)."""
        return self.prices.tool(tool.name, tool.cost) if self.ledger is not None else 0

    def breaker(self, tool: Any) -> Breaker:
        """This process's circuit breaker for `tool`."""
        return self.breaker_for(tool.name, tool.breaker_failures, tool.breaker_reset_s)

    def breaker_for(self, name: str, failures: int = 5, reset_s: float = 30.0) -> Breaker:
        found = self._breakers.get(name)
        if found is None:
            found = self._breakers[name] = Breaker(name, failures, reset_s)
        return found

    async def settle_leases(self, run_id: str) -> None:
        """Capture exactly what this process decided locally for the run."""
        for key in [k for k in self._leases if k[0] == run_id]:
            await self._leases.pop(key).settle()

    async def run_cost(self, run_id: str, *, seen: RunSpend | None = None) -> int:
        """What the ledger (the source of truth) captured for the run; 0 without a ledger.

        `seen`: the run's spend as the latest capture of the asking attempt left it, when that
        task is the run's only spender (its root, with no children). Every capture before it,
        by any attempt, was decided before it, so nothing is asked. Leases settle apart from
        the captures an attempt sees, so with them it is asked."""
        if self.ledger is None:
            return 0
        if seen is not None and not self.ledger_settings.ledger_lease:
            return seen.spent
        return int((await self.ledger.run_cost(run_id))["spent"])

    async def capture(self, pending: PendingCapture) -> RunSpend | None:
        """Send a journaled capture (idempotent by its op id: a resend changes nothing); the
        run's spend after it, as the ledger reports it."""
        assert self.ledger is not None
        captured = await self.ledger.capture(
            pending.op_id,
            pending.hold_id,
            pending.amount,
            currency=pending.currency,
            tokens=pending.tokens,
            tags=pending.tags,
        )
        reported = (captured.get("levels") or {}).get(f"run:{pending.tags.get('run', '')}")
        try:
            return msgspec.convert(reported, RunSpend)
        except msgspec.ValidationError:
            return None  # none reported (a ledger of an earlier version): the cost is asked

    @contextlib.asynccontextmanager
    async def charge(self, ctx: Context, tool: Any, seq: int, args: Any) -> AsyncIterator[Bill]:
        """Hold a costed tool's price at every budget level before it runs, void it if the
        tool fails; on success the bill carries the capture the caller journals, then sends.
        Ids derive from the task and step, so a replay or retry reuses the same hold and is
        never charged twice. A metered tool holds its price times the most units the
        arguments allow and captures what it used (`bill.units`)."""
        bill = Bill()
        price = self.prices.tool(tool.name, tool.cost)
        cost = price if tool.max_units is None else math.ceil(price * tool.max_units(args))
        if self.ledger is None or not cost:
            yield bill
            return
        user = ctx.principal.removeprefix("user:")
        if self.ledger_settings.ledger_lease:
            lease = self.lease(ctx, user, tool.name)
            hold = await lease.spend(cost)
            try:
                yield bill
            except BaseException:
                lease.unspend(cost, hold)
                raise
            bill.cost = _used(tool, price, cost, bill)
            if bill.cost < cost and not lease.unspend(cost - bill.cost, hold):
                bill.cost = cost  # its chunk was settled meanwhile: the hold was spent
            return
        key = ctx.charge_key(seq)
        hold_id = derived_id(ctx.task_id, "hold", key)
        levels = [f"user:{user}", f"run:{ctx.run_id}", f"agent:{self.agent}"]
        tags = {"run": ctx.run_id, "agent": self.agent, "tool": tool.name}
        currency = self.ledger_settings.ledger_currency
        await self._hold(hold_id, user, f"tool:{tool.name}", cost, levels, tags)
        try:
            yield bill
        except BaseException:
            await self._void(ctx, seq, derived_id(ctx.task_id, "void", key), hold_id, tags)
            raise
        bill.cost = _used(tool, price, cost, bill)
        bill.pending = PendingCapture(
            op_id=derived_id(ctx.task_id, "capture", key),
            hold_id=hold_id,
            amount=bill.cost,
            currency=currency,
            tags=tags,
        )

    def llm_cost(
        self,
        model: str,
        estimate_tokens: int,
        max_tokens: int,
        input_tokens: int,
        output_tokens: int,
    ) -> int:
        """What an LLM call is charged: its tokens at the model's prices, never more than its
        hold (the prompt estimate plus max_tokens); 0 without a ledger or a price."""
        price = self.prices.models.get(model)
        if self.ledger is None or price is None:
            return 0
        held = price.input * estimate_tokens + price.output * max_tokens
        return min(held, self.prices.chat(model, input_tokens, output_tokens))

    @contextlib.asynccontextmanager
    async def charge_llm(
        self, ctx: Context, model: str, estimate_tokens: int, max_tokens: int, seq: int
    ) -> AsyncIterator[Bill]:
        """Hold what the call can cost at most (prompt estimate + max_tokens at the model's
        prices) and the tokens it can use at most (the same estimate + max_tokens), so parallel
        calls cannot together pass a token budget; capture what the reported usage costs (never
        above the hold) and the tokens it used; void on error. A model without a price reserves
        and records tokens only (its hold is of 0 micro-units)."""
        bill = Bill()
        if self.ledger is None:
            yield bill
            return
        price = self.prices.models.get(model)
        user = ctx.principal.removeprefix("user:")
        reserve = estimate_tokens + max_tokens
        held = price.input * estimate_tokens + price.output * max_tokens if price else 0
        key = ctx.charge_key(seq)
        hold_id = derived_id(ctx.task_id, "llm-hold", key)
        tags = {"run": ctx.run_id, "agent": self.agent, "model": model}
        currency = self.ledger_settings.ledger_currency
        levels = [f"user:{user}", f"run:{ctx.run_id}", f"agent:{self.agent}"]
        await self._hold(hold_id, user, f"model:{model}", held, levels, tags, tokens=reserve)
        try:
            yield bill
        except BaseException:
            await self._void(ctx, seq, derived_id(ctx.task_id, "llm-void", key), hold_id, tags)
            raise
        bill.cost = self.llm_cost(
            model, estimate_tokens, max_tokens, bill.input_tokens, bill.output_tokens
        )
        bill.pending = PendingCapture(
            op_id=derived_id(ctx.task_id, "llm-capture", key),
            hold_id=hold_id,
            amount=bill.cost,
            currency=currency,
            tokens=bill.input_tokens + bill.output_tokens,
            tags=tags,
        )

    async def _void(
        self, ctx: Context, seq: int, void_id: str, hold_id: str, tags: dict[str, str]
    ) -> None:
        """Release a failed step's hold. The journal learns first that the hold is spent, so
        the retry takes a new one (a crash in between leaves the old hold to expire)."""
        assert self.ledger is not None
        await ctx.note_void(seq)
        await self.ledger.void(void_id, hold_id, tags)

    async def _hold(
        self,
        hold_id: str,
        user: str,
        payee: str,
        amount: int,
        levels: list[str],
        tags: dict[str, str],
        tokens: int = 0,
    ) -> None:
        """Hold `amount` (and `tokens`) at every level. A rate limit is waited out in place
        (the task keeps its message, and no attempt is spent: a retried task that spent one per
        refusal was dead-lettered after five); past `RATE_WAIT_S` of waiting, it turns into a
        delayed retry of the task."""
        assert self.ledger is not None
        waited = 0.0
        while True:
            try:
                await self.ledger.hold(
                    hold_id,
                    f"user:{user}",
                    payee,
                    amount,
                    levels,
                    currency=self.ledger_settings.ledger_currency,
                    tags=tags,
                    rate=f"agent:{self.agent}/{payee}",
                    tokens=tokens,
                )
                return
            except RateLimited as exc:
                # the window's edge is the ledger's clock: a little past it, never a busy loop
                pause = max(RATE_PAUSE_MIN_S, exc.retry_after_s + RATE_PAUSE_MIN_S)
                if waited + pause > RATE_WAIT_S:
                    raise Retry(str(exc), delay_s=max(1.0, exc.retry_after_s)) from None
                await asyncio.sleep(pause)
                waited += pause

    # -- services for Context ---------------------------------------------------------------
