"""The ledger writer's process: `relaybus service ledger [--partition pK]` serves one partition's
writer as the `relaybus-ledger` micro service, with its budget gauges, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from opentelemetry.metrics import CallbackOptions, Observation

from relaybus.bus import Bus, Settings, default_topology, ensure, metrics
from relaybus.bus.micro import Endpoint, MicroService
from relaybus.bus.runtime import settle_heap, stop_on_signals

from .messages import WRITES, batch_schema, request_schema
from .model import Level
from .queries import QUERIES
from .service import LedgerWriter

log = logging.getLogger("relaybus.ledger")
GAUGED_LEVELS = ("user:", "agent:")
BUDGET_SERIES = 1000  # budgets reported as gauges (they are configured, so few)


def budget_gauges(writer: LedgerWriter) -> None:
    """`relaybus.budget.spent|held|limit` for each configured budget, in its current period,
    read from the ledger's state at collection time. Runs' own levels are not series (one per
    run would grow without bound): a run's cost is on its trace and in `relaybus ledger
    statement`, and `relaybus.spent` allocates all spend by agent, tool and model."""

    def levels() -> list[tuple[str, int, Level]]:
        state = writer.state
        rows = []
        for name, budget in sorted(state.budgets.items()):
            # operators' budgets only: runs' (`run:`, payments' `payrun:`) come one per run
            if not name.startswith(GAUGED_LEVELS) or not budget.limit:
                continue
            used = state.levels.get(state.period_key(name, state.clock)) or Level()
            rows.append((name, budget.limit, used))
        return rows[:BUDGET_SERIES]

    def gauge(name: str, value: Callable[[int, Level], int], description: str) -> None:
        def observe(_options: CallbackOptions) -> list[Observation]:
            return [Observation(value(limit, used), {"budget": b}) for b, limit, used in levels()]

        metrics.METER.create_observable_gauge(
            name, callbacks=[observe], unit="{micro-unit}", description=description
        )

    gauge("relaybus.budget.limit", lambda limit, used: limit, "a budget's limit per period")
    gauge("relaybus.budget.spent", lambda limit, used: used.spent, "captured in this period")
    gauge("relaybus.budget.held", lambda limit, used: used.held, "held by open holds")


def ledger_micro(bus: Bus, writer: LedgerWriter) -> MicroService:
    """`relaybus-ledger`: one endpoint per write and query on `<prefix>.svc.ledger.<op>`, or
    on `<prefix>.svc.ledger.<op>.<partition>` when the ledger has several partitions (then
    `p0` answers the unpartitioned subjects too, so a plain NATS client still gets answers)."""
    subjects, partition = bus.subjects, writer.partition
    split = writer.partitions > 1

    def subject(op: str) -> str:
        return (
            subjects.service_at("ledger", op, partition)
            if split
            else subjects.service("ledger", op)
        )

    return MicroService(
        bus,
        name="relaybus-ledger",
        description="relaybus ledger: budgets, holds and captures, rate limits, cost queries",
        queue=f"ledger-{partition}" if split else "ledger",
        concurrency=64,  # decisions made while an append is in flight share the next one
        endpoints=[
            Endpoint(
                name=op,
                subject=subject(op),
                handler=writer.handle,
                request_schema=request_schema(op),
            )
            for op in (*WRITES, *QUERIES)
        ]
        + [
            Endpoint(
                name="batch",
                subject=subject("batch"),
                handler=writer.handle,
                request_schema=batch_schema(),
            )
        ],
        unmatched=(
            subjects.service_ops("ledger")
            if partition == "p0"
            else subjects.service_at("ledger", "*", partition),
            writer.handle,
        ),
        metadata={"partition": partition, "partitions": str(writer.partitions)} if split else {},
    )


async def serve_ledger(settings: Settings, partition: str = "p0") -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    settle_heap()
    async with Bus(settings, name="ledger") as bus:
        bus.stop_when_lost(stop)
        await ensure(bus, default_topology(bus.subjects, bus.settings.stream_replicas))
        writer = LedgerWriter(bus, partition)
        await writer.check_layout()
        count = await writer.rebuild()
        budget_gauges(writer)
        async with ledger_micro(bus, writer):
            log.info(
                "ledger partition %s rebuilt from %d entries; answering", writer.partition, count
            )
            done = asyncio.ensure_future(stop.wait())
            failed = asyncio.ensure_future(writer.failed.wait())
            await asyncio.wait({done, failed}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            failed.cancel()
    if writer.failed.is_set():
        log.error("ledger writer stopped after an append error; exiting so it is restarted")
        return 1
    return 1 if bus.lost else 0
