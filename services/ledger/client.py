"""What the runtime and the CLI use of the ledger.

Agents send only `AGENT_OPS` (hold, capture, void, cap, run_cost): natsconfig builds every
agent's NATS permissions from it. `set_budget`, `set_rate_limit`, `refund` and the account-wide
queries (`balance`, `holds`, `levels`, `statement`) are an operator's (the CLI, the console,
the payment webhook receiver): an agent's connection cannot publish to their subjects.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import weakref
from collections.abc import Sequence
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind

from relaybus.bus import Bus, ConnectionFailed, rpc, tracing
from relaybus.bus.errors import ErrorInfo, rebuild_error
from relaybus.bus.rpc import Reply

from . import partitions as partitioning
from .errors import BudgetExceeded, HoldNotFound, LedgerError, RateLimited
from .messages import AGENT_OPS, MAX_BATCH, OPERATOR_OPS, OPERATOR_QUERIES, PAYMENT_LEVEL
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
from .settings import LedgerSettings

__all__ = ["AGENT_OPS", "OPERATOR_OPS", "OPERATOR_QUERIES", "Budget", "LedgerClient", "RateLimit"]

TRACED = (Hold, Capture, Void, Refund)
BATCHABLE = (Hold, Capture, Void)  # messages.BATCHED
IN_FLIGHT = 4  # batches a connection has on their way at once


class _Batcher:
    """One per connection: holds, captures and voids asked for while a batch is on its way go
    out together in the next `ledger.batch` request (up to `IN_FLIGHT` batches on their way at
    once), so many concurrent tasks cost the ledger one request per batch, and the ledger one
    journal append per group of them. Nothing waits for company longer than a turn of the loop."""

    def __init__(self, bus: Bus, subject: str) -> None:
        self.bus = bus
        self.subject = subject
        self.queue: list[tuple[Op, str, asyncio.Future[dict[str, Any]]]] = []
        self.senders: set[asyncio.Task[None]] = set()

    async def send(self, op: Op) -> dict[str, Any]:
        answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        trace: dict[str, str] = {}
        tracing.inject(trace)  # each operation's server span joins its own task's trace
        self.queue.append((op, trace.get("traceparent", ""), answered))
        if len(self.senders) < IN_FLIGHT:
            # no caller's context: the batch request itself belongs to no one task's trace
            sender = asyncio.create_task(self._send_queued(), context=contextvars.Context())
            self.senders.add(sender)
        return await answered

    async def _send_queued(self) -> None:
        me = asyncio.current_task()
        batch: list[tuple[Op, str, asyncio.Future[dict[str, Any]]]] = []
        try:
            await asyncio.sleep(0)  # what the other tasks ask in this turn of the loop goes along
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                batch = [queued for queued in batch if not queued[2].done()]  # callers gone
                if batch:
                    await self._send(batch)
                batch = []
        except BaseException as exc:  # cancelled or broken: no caller is left waiting
            failure = exc if isinstance(exc, Exception) else LedgerError("the ledger client closed")
            for _, _, answered in (*batch, *self.queue):
                if not answered.done():
                    answered.set_exception(failure)
            self.queue = []
            raise
        finally:
            # leaves the set in the same step it saw an empty queue: an op queued after this
            # finds a free slot and starts a sender of its own
            self.senders.discard(me)

    async def _send(self, batch: list[tuple[Op, str, asyncio.Future[dict[str, Any]]]]) -> None:
        try:  # every op has an id the ledger answers once: a resend is safe
            replies = await rpc.call_as(
                self.bus,
                self.subject,
                [_item(op, tp) for op, tp, _ in batch],
                list[Reply],
                idempotent=True,
            )
            if len(replies) != len(batch):
                raise LedgerError(
                    f"the ledger answered {len(replies)} of {len(batch)} batched operations; "
                    "check that the ledger service and this client are the same version"
                )
        except Exception as exc:
            for _, _, answered in batch:
                if not answered.done():
                    answered.set_exception(exc)
            return
        for (_, _, answered), reply in zip(batch, replies, strict=True):
            if answered.done():  # its caller was cancelled
                continue
            try:  # one unreadable reply is that caller's error, not the others'
                if reply.ok:
                    answered.set_result(dict(msgspec.json.decode(reply.body)))
                else:
                    info = reply.error or ErrorInfo(type="LedgerError", message="refused")
                    answered.set_exception(rebuild_error(info))
            except Exception as exc:
                answered.set_exception(
                    LedgerError(f"the ledger's reply to a batched operation is unreadable: {exc}")
                )


def _item(op: Op, traceparent: str) -> Any:
    if not traceparent:
        return op
    item = msgspec.to_builtins(op)
    item["traceparent"] = traceparent
    return item


_batchers: weakref.WeakKeyDictionary[Bus, dict[str, _Batcher]] = weakref.WeakKeyDictionary()
_homes: weakref.WeakKeyDictionary[Bus, dict[str, str]] = weakref.WeakKeyDictionary()
REMEMBERED_HOMES = 65536  # holds whose home partition a connection remembers for its capture


def _with_levels(home: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The home's result of a capture, with every part's levels (each part reports its own)."""
    levels: dict[str, Any] = {}
    for part in parts:
        levels.update(part.get("levels") or {})
    return {**home, "levels": levels} if levels else home


def _remember(bus: Bus, hold_id: str, home: str) -> None:
    homes = _homes.get(bus)
    if homes is None:
        homes = _homes[bus] = {}
    if len(homes) >= REMEMBERED_HOMES:
        del homes[next(iter(homes))]  # the oldest: a capture of it asks every partition
    homes[hold_id] = home


class LedgerClient:
    """Routes each operation to the ledger partition that owns it (partitions.py): with one
    partition, the unpartitioned subjects; a hold whose levels span partitions is placed in
    each at once and voided where it was placed if any refuses, and its capture, void or
    refund reaches every part."""

    def __init__(self, bus: Bus, partitions: int | None = None) -> None:
        self.bus = bus
        self.partitions = partitions or LedgerSettings.of(bus.settings).ledger_partitions

    def _subject(self, op: str, partition: str = "p0") -> str:
        if self.partitions == 1:
            return self.bus.subjects.service("ledger", op)
        return self.bus.subjects.service_at("ledger", op, partition)

    async def _write(self, op: Op) -> dict[str, Any]:
        if self.partitions == 1:
            return await self._write_at(op, "p0")
        if isinstance(op, Hold):
            parts = partitioning.split_hold(op, self.partitions)
            result = await self._hold_parts(op, parts)
            _remember(self.bus, op.id, next(iter(parts)))
            return result
        if isinstance(op, Capture | Void | Refund):
            return await self._settle(op)
        if isinstance(op, Tick):  # every partition's clock
            names = partitioning.names(self.partitions)
            return (await asyncio.gather(*(self._write_at(op, p) for p in names)))[0]
        return await self._write_at(op, self._partition_of(op))

    async def _settle(self, op: Capture | Void | Refund) -> dict[str, Any]:
        """A capture, void or refund goes to its hold's home (remembered from the hold, else
        asked of every partition), then to each of the home's shares: idempotent, so a retry
        after a crash between the two finds the home's first result and its shares again."""
        home = _homes.get(self.bus, {}).get(op.transfer)
        if home is not None:
            try:
                result = await self._write_at(op, home)
            except HoldNotFound:
                home = None
            else:
                if result.get("shares"):
                    shares = [self._write_at(op, p) for p in result["shares"]]
                    return _with_levels(result, [result, *await asyncio.gather(*shares)])
                return result
        names = partitioning.names(self.partitions)
        outcomes = await asyncio.gather(
            *(self._write_at(op, p) for p in names), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, dict) and not outcome.get("share"):
                return _with_levels(outcome, [o for o in outcomes if isinstance(o, dict)])
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        raise next((f for f in failures if not isinstance(f, HoldNotFound)), failures[0])

    def _partition_of(self, op: Op) -> str:
        count = self.partitions
        match op:
            case SetBudget():
                return partitioning.owner(op.budget.level, count)
            case Cap():
                return partitioning.owner(op.level, count)
            case SetRateLimit():
                return partitioning.owner(op.limit.key, count)
            case Transfer():
                return partitioning.owner(op.payer, count)
            case _:
                return partitioning.owner(op.id, count)

    async def _write_at(self, op: Op, partition: str) -> dict[str, Any]:
        if isinstance(op, BATCHABLE):
            batchers = _batchers.get(self.bus)
            if batchers is None:
                batchers = _batchers[self.bus] = {}
            key = partition if self.partitions > 1 else ""  # "": the unpartitioned subject
            batcher = batchers.get(key)
            if batcher is None:
                batcher = batchers[key] = _Batcher(self.bus, self._subject("batch", partition))
            return await batcher.send(op)
        return dict(await rpc.call(self.bus, self._subject(op.kind, partition), op))

    async def _hold_parts(
        self, hold: Hold, parts: dict[str, Hold], *, again: bool = True
    ) -> dict[str, Any]:
        """Place every part at once. If any is refused, undo those placed and raise the refusal
        (a budget refusal first: it is what the caller acts on); a part that did not answer is
        left for the caller's retry with the same id to complete."""
        outcomes = await asyncio.gather(
            *(self._write_at(part, p) for p, part in parts.items()), return_exceptions=True
        )
        answered = [p for p, o in zip(parts, outcomes, strict=True) if isinstance(o, dict)]
        states = {o.get("state", "held") for o in outcomes if isinstance(o, dict)}
        if states - {"held"}:
            # a retry of a hold placed before and settled since (or whose undo was lost)
            if "captured" in states or not again:
                await self._undo(hold, answered)  # those placed now; a captured part refuses
                raise LedgerError(
                    f"hold {hold.id} was placed and has since been "
                    f"{'captured' if 'captured' in states else ', '.join(sorted(states))}; "
                    "a new hold needs a new id"
                )
            await self._undo(hold, list(parts))  # voided or expired: placed afresh, once
            return await self._hold_parts(hold, parts, again=False)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        refused = [o for o in failed if not isinstance(o, ConnectionFailed | TimeoutError)]
        if refused:  # decided: the parts placed are undone, so a retry is decided afresh
            await self._undo(hold, answered)
            refused.sort(key=lambda exc: not isinstance(exc, BudgetExceeded | RateLimited))
            raise refused[0]
        if failed:  # unanswered: a retry with the same id completes the placement
            raise failed[0]
        return outcomes[0]  # type: ignore[return-value]  # the home's

    async def _undo(self, hold: Hold, partitions: list[str]) -> None:
        undo = Void(id=f"{hold.id}/undo/{secrets.token_hex(6)}", transfer=hold.id, undo=True)
        await asyncio.gather(*(self._write_at(undo, p) for p in partitions), return_exceptions=True)

    async def send(self, op: Op) -> dict[str, Any]:
        if not isinstance(op, TRACED):
            return await self._write(op)
        with tracing.TRACER.start_as_current_span(
            f"ledger {op.kind}",
            kind=SpanKind.CLIENT,
            attributes={
                "relaybus.run_id": op.tags.get("run", ""),
                "relaybus.ledger.operation": op.kind,
                "relaybus.ledger.transfer": op.id if isinstance(op, Hold) else op.transfer,
                "relaybus.ledger.amount": 0 if isinstance(op, Void) else op.amount,
            },
        ):
            return await self._write(op)

    async def query(self, name: str, **req: Any) -> Any:
        """A query, answered by every partition that may hold part of its answer (merged)."""
        if self.partitions == 1:
            return await rpc.call(self.bus, self._subject(name), req)
        if name == "run_cost" and req.get("run"):
            asked = {
                partitioning.owner(f"{level}{req['run']}", self.partitions)
                for level in ("run:", PAYMENT_LEVEL)
            }
        elif name == "statement" and req.get("user"):  # a user's captures are in its home
            asked = {partitioning.owner(f"user:{req['user']}", self.partitions)}
        else:
            asked = set(partitioning.names(self.partitions))
        answers = await asyncio.gather(
            *(rpc.call(self.bus, self._subject(name, p), req) for p in sorted(asked))
        )
        return partitioning.merge(name, list(answers), req)

    async def set_rate_limit(
        self, op_id: str, key: str, rpm: int = 0, tpm: int = 0
    ) -> dict[str, Any]:
        """Operator only. Requests / tokens per minute for an (agent, resource) key like `agent:a/tool:search`."""
        return await self.send(SetRateLimit(id=op_id, limit=RateLimit(key=key, rpm=rpm, tpm=tpm)))

    async def hold(
        self,
        op_id: str,
        payer: str,
        payee: str,
        amount: int,
        levels: list[str],
        *,
        currency: str = "USD",
        ttl_s: float = 300.0,
        tags: dict[str, str] | None = None,
        rate: str = "",
        tokens: int = 0,
    ) -> dict[str, Any]:
        """Reserve `amount` micro-units (and `tokens`, e.g. an LLM call's prompt estimate plus
        its max_tokens) at every level in `levels`, or fail as a whole (BudgetExceeded)."""
        return await self.send(
            Hold(
                rate=rate,
                tokens=tokens,
                id=op_id,
                payer=payer,
                payee=payee,
                amount=amount,
                levels=levels,
                currency=currency,
                ttl_s=ttl_s,
                tags=tags or {},
            )
        )

    async def capture(
        self,
        op_id: str,
        hold_id: str,
        amount: int,
        *,
        currency: str = "USD",
        tokens: int = 0,
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return await self.send(
            Capture(
                id=op_id,
                transfer=hold_id,
                amount=amount,
                currency=currency,
                tokens=tokens,
                tags=tags or {},
            )
        )

    async def void(
        self, op_id: str, hold_id: str, tags: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return await self.send(Void(id=op_id, transfer=hold_id, tags=tags or {}))

    async def cap(self, op_id: str, level: str, limit: int) -> dict[str, Any]:
        """Narrow a run's payment level (`payrun:…`) to at most `limit` micro-units. A cap only
        narrows: one above the cap in force changes nothing. Returns {level, limit, narrowed}."""
        return await self.send(Cap(id=op_id, level=level, amount=limit))

    async def run_cost(self, run_id: str) -> dict[str, Any]:
        """A run's cost, steps and tokens, and its payments: {spent, held, …, payments}."""
        return dict(await self.query("run_cost", run=run_id))

    async def refund(self, op_id: str, transfer: str, amount: int) -> dict[str, Any]:
        """Operator only (and the payment webhook receiver): refunds restore budgets."""
        return await self.send(Refund(id=op_id, transfer=transfer, amount=amount))

    async def set_budget(
        self, op_id: str, budget: Budget, only: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Operator only: set (or raise) a budget level's limits; with `only`, just those
        fields (the level's others keep their values). The result is the budget now in force."""
        return await self.send(SetBudget(id=op_id, budget=budget, only=list(only)))
