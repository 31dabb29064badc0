"""What the console reads, through the same code the CLI uses: run records (`relaybus runs`),
the events stream (`watch`), a run's tree and chain (`trace`, `identity chain`), the ledger
(`ledger levels` / `statement`) and dead letters (`dlq list`). Every read is cut down to what
the viewer may see: a user sees only runs whose principal is that user."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from relaybus.bus import Bus, Event, RelayError
from relaybus.bus import cli as bus_cli
from relaybus.bus.feed import EventFeed, from_the_run
from relaybus.bus.subjects import check_name
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.runs.shown import shown, shown_one
from relaybus.services.runs.state import ENDED, RunRecord
from relaybus.services.runs.store import RunStore

from .. import runtree
from ..observe import chain_of, ledger_run_cost
from ..submit import run_store
from .access import NotFound, Viewer
from .figures import figures, run_row
from .graph import run_graph
from .labels import Attempts, event_row, event_rows

RECENT_RUNS = 500  # how far back the runs, approvals and costs pages look
KEEPALIVE_S = 15.0
PARALLEL_RUNS = 8  # runs whose events the runs list reads at once
SETTLED_S = 10.0  # a run ended this long ago has all its events in
KEPT_FIGURES = 5_000  # ended runs whose numbers are kept


class ConsoleData:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._store: RunStore | None = None
        self._owners: dict[str, str] = {}  # run → principal (`user:ID`); it never changes
        # an ended run's numbers, by run and (status, end) — a replayed run ends again
        self._figures: dict[str, tuple[tuple[str, float], dict[str, Any]]] = {}

    async def store(self) -> RunStore:
        if self._store is None:
            self._store = await run_store(self.bus)
        return self._store

    async def owner_of(self, run_id: str) -> str:
        """The run's principal as its record names it (`user:ID`), '' if it has no record."""
        owner = self._owners.get(run_id)
        if owner is None:
            record = await (await self.store()).get(run_id) if run_id else None
            if record is None:
                return ""
            owner = self._owners[run_id] = record.submitted_by
        return owner

    async def record(self, viewer: Viewer, run_id: str) -> RunRecord:
        """The run's record, if this viewer may see it; NotFound (the same either way) if not."""
        record = await (await self.store()).get(checked_run_id(run_id))
        if record is None or not viewer.sees(record.submitted_by):
            raise NotFound(f"no run {run_id}")
        return await shown_one(self.bus, record)

    async def runs(self, viewer: Viewer, limit: int) -> list[dict[str, Any]]:
        records = await (await self.store()).recent(RECENT_RUNS if viewer.user else limit)
        visible = await shown(self.bus, [r for r in records if viewer.sees(r.submitted_by)][:limit])
        ledger = await self._ledger_costs() if any(not self._kept(r) for r in visible) else None
        gate = asyncio.Semaphore(PARALLEL_RUNS)

        async def row(record: RunRecord) -> dict[str, Any]:
            numbers = self._kept(record)
            if numbers is None:
                async with gate:
                    tree = runtree.build(record.run_id, await self._events(record.run_id, record))
                if ledger is not None:
                    tree.ledger_cost = ledger.get(record.run_id, 0)
                numbers = self._keep(record, tree)
            return run_row(record, record.run_id, numbers)

        return list(await asyncio.gather(*(row(r) for r in visible)))

    async def run_view(self, viewer: Viewer, run_id: str) -> dict[str, Any]:
        """The run page: record, graph, timeline, chain, cost checked against the ledger."""
        record = await (await self.store()).get(checked_run_id(run_id))
        record = await shown_one(self.bus, record) if record is not None else None
        # a user sees only runs recorded as theirs; the operator also runs published without
        # `submit` (no record), as long as they have events
        visible = viewer.sees(record.submitted_by) if record else viewer.user is None
        if not visible:
            raise NotFound(f"no run {run_id}")
        events = await self._events(run_id, record)
        if record is None and not events:
            raise NotFound(f"no run {run_id}")
        tree = runtree.build(run_id, events)
        tree.chain = await chain_of(self.bus, run_id)
        tree.ledger_cost = await ledger_run_cost(self.bus, run_id)
        summary = tree.as_json()
        del summary["tasks"]
        row = run_row(record, run_id, self._keep(record, tree), tree)
        return {
            "run": row,
            "pending": row["waiting_for"],
            "trace": summary,
            "graph": run_graph(tree, row["status"] in ENDED),
            "events": event_rows(events),
        }

    async def _events(self, run_id: str, record: RunRecord | None) -> list[Event]:
        """The run's stored events, those of agents outside the run left out."""
        async with EventFeed(self.bus, run_id, replay=True) as feed:
            sourced = await feed.stored_sourced(first_timeout_s=0.5)
        if record and record.agent:
            return from_the_run(sourced, record.agent)
        return [e for e, _ in sourced]

    async def _ledger_costs(self) -> dict[str, int] | None:
        """What the ledger captured per run (`run:RUN` levels), None when no ledger answers:
        the figure `ledger_run_cost` reads for one run, for every run in one query."""
        try:
            rows = await LedgerClient(self.bus).query("levels")
        except RelayError:
            return None
        costs: dict[str, int] = {}
        for row in rows:
            if row["level"].startswith("run:"):
                run_id = row["level"][4:]
                costs[run_id] = costs.get(run_id, 0) + int(row["spent"])
        return costs

    def _kept(self, record: RunRecord) -> dict[str, Any] | None:
        kept = self._figures.get(record.run_id)
        return kept[1] if kept and kept[0] == (record.status, record.ended) else None

    def _keep(self, record: RunRecord | None, tree: runtree.RunTree) -> dict[str, Any]:
        """The run's numbers (`figures`), kept once it ended, its events settled and the
        ledger answered for its cost."""
        numbers = figures(record, tree)
        if record is not None and record.status in ENDED and tree.ledger_cost is not None:
            if tree.status in ENDED or time.time() - record.ended > SETTLED_S:
                self._figures[record.run_id] = ((record.status, record.ended), numbers)
                while len(self._figures) > KEPT_FIGURES:
                    del self._figures[next(iter(self._figures))]
        return numbers

    async def approvals(self, viewer: Viewer) -> list[dict[str, Any]]:
        """Every signal a live run waits for and nobody has sent yet."""
        rows = []
        for record in await (await self.store()).waiting(RECENT_RUNS):
            if not viewer.sees(record.submitted_by):
                continue
            for name in record.pending_signals():
                waiter = record.waits[name]
                rows.append(
                    {
                        "run_id": record.run_id,
                        "signal": name,
                        "agent": waiter.agent,
                        "task_id": waiter.task_id,
                        "run_agent": record.agent,
                        "submitted_by": record.submitted_by,
                        "started": record.started,
                        "status": record.status,
                    }
                )
        return rows

    async def costs(self, viewer: Viewer) -> dict[str, Any]:
        """Budget levels (spent / held / remaining), every charge with its user, agent, model
        and tool (for the chart), and spend alerts — the viewer's own when a user."""
        ledger = LedgerClient(self.bus)
        levels = list(await ledger.query("levels"))
        if viewer.user is not None:
            own = {
                r.run_id
                for r in await (await self.store()).recent(RECENT_RUNS)
                if viewer.sees(r.submitted_by)
            }
            levels = [row for row in levels if _level_is_own(row["level"], viewer.user, own)]
            users = [viewer.user]
        else:
            users = sorted(
                {
                    row["level"].split("@", 1)[0].removeprefix("user:")
                    for row in levels
                    if row["level"].startswith("user:")
                }
            )
        lines = []
        for user in users:
            statement = await ledger.query("statement", user=user, period="")
            lines += [_line(user, line) for line in statement["lines"]]
        lines.sort(key=lambda line: line["time"])
        return {
            "levels": levels,
            "lines": lines,
            "total": sum(line["amount"] for line in lines),
            "alerts": await self._alerts(viewer),
        }

    async def _alerts(self, viewer: Viewer) -> list[dict[str, Any]]:
        async with EventFeed(self.bus, kind="alert", replay=True) as feed:
            events = await feed.stored(first_timeout_s=0.3)
        return [event_row(e) for e in events if await self.visible(viewer, e.run_id)]

    async def visible(self, viewer: Viewer, run_id: str) -> bool:
        return viewer.user is None or viewer.sees(await self.owner_of(run_id))

    async def dead_letters(self, viewer: Viewer, limit: int = 200) -> list[dict[str, Any]]:
        letters = await bus_cli.read_dead_letters(self.bus, limit)
        return [
            bus_cli.dead_letter_row(seq, letter)
            for seq, letter in letters
            if await self.visible(viewer, letter.run_id)
        ]

    async def events(
        self,
        viewer: Viewer,
        *,
        run: str | None = None,
        agent: str | None = None,
        status: str | None = None,
        since: float | None = None,
    ) -> AsyncIterator[dict[str, Any] | None]:
        """Live events (a run's from its start; otherwise those since `since`), filtered; yields
        None every KEEPALIVE_S without one. Call `record` first to refuse a bad run id early."""
        async with EventFeed(
            self.bus, run, replay=run is not None, since=None if run else since
        ) as feed:
            attempts = Attempts(from_start=run is not None)  # every event, shown or not
            while True:
                event = await feed.next(KEEPALIVE_S)
                if event is None:
                    yield None
                    continue
                detail = attempts.detail(event)
                if agent and agent not in (event.sender, event.recipient):
                    continue
                row = event_row(event, detail)
                if status and row["status"] != status:
                    continue
                if await self.visible(viewer, event.run_id):
                    yield row


def checked_run_id(run_id: str) -> str:
    """`run_id` if it can name a run at all; NotFound otherwise."""
    try:
        return check_name("run", run_id)
    except RelayError:
        raise NotFound(f"{run_id!r} is not a run id") from None


def _level_is_own(level: str, user: str, runs: set[str]) -> bool:
    base = level.split("@", 1)[0]
    return base == f"user:{user}" or (base.startswith("run:") and base[4:] in runs)


def _line(user: str, line: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": line["time"],
        "amount": line["amount"],
        "kind": line["kind"],
        "category": line.get("category", ""),
        "user": user,
        "agent": line.get("agent", ""),
        "model": line.get("model", ""),
        "tool": line.get("tool", ""),
        "run": line.get("run", ""),
    }
