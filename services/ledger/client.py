"""What the runtime and the CLI use of the ledger.

Agents send only `AGENT_OPS` (hold, capture, void, cap, run_cost): natsconfig builds every
agent's NATS permissions from it. `set_budget`, `set_rate_limit`, `refund` and the account-wide
queries (`balance`, `holds`, `levels`, `statement`) are an operator's (the CLI, the console,
the payment webhook receiver): an agent's connection cannot publish to their subjects.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind

from relaybus.bus import Bus, rpc, tracing
from relaybus.bus.errors import ErrorInfo, rebuild_error
from relaybus.bus.rpc import Reply

from .errors import LedgerError
from .messages import AGENT_OPS, MAX_BATCH, OPERATOR_OPS, OPERATOR_QUERIES
from .ops import Budget, Cap, Capture, Hold, Op, RateLimit, Refund, SetBudget, SetRateLimit, Void

__all__ = ["AGENT_OPS", "OPERATOR_OPS", "OPERATOR_QUERIES", "Budget", "LedgerClient", "RateLimit"]

TRACED = (Hold, Capture, Void, Refund)
BATCHABLE = (Hold, Capture, Void)  # messages.BATCHED
IN_FLIGHT = 4  # batches a connection has on their way at once


class _Batcher:
    """One per connection: holds, captures and voids asked for while a batch is on its way go
    out together in the next `ledger.batch` request (up to `IN_FLIGHT` batches on their way at
    once), so many concurrent tasks cost the ledger one request per batch, and the ledger one
    journal append per group of them. Nothing waits for company longer than a turn of the loop."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.subject = bus.subjects.service("ledger", "batch")
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


_batchers: weakref.WeakKeyDictionary[Bus, _Batcher] = weakref.WeakKeyDictionary()


class LedgerClient:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def _subject(self, op: str) -> str:
        return self.bus.subjects.service("ledger", op)

    async def _write(self, op: Op) -> dict[str, Any]:
        if isinstance(op, BATCHABLE):
            batcher = _batchers.get(self.bus)
            if batcher is None:
                batcher = _batchers[self.bus] = _Batcher(self.bus)
            return await batcher.send(op)
        return dict(await rpc.call(self.bus, self._subject(op.kind), op))

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
        return await rpc.call(self.bus, self._subject(name), req)

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

    async def set_budget(self, op_id: str, budget: Budget) -> dict[str, Any]:
        """Operator only: set (or raise) a budget level's limits."""
        return await self.send(SetBudget(id=op_id, budget=budget))
