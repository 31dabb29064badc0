"""How an agent process changes its runs' records: through the run authority (with NATS
authentication on, agents may not write the runs bucket), or straight to the bucket on a
development server without authentication."""

from __future__ import annotations

from typing import Protocol

import msgspec

from relaybus.bus import Bus, Link, rpc

from .state import CountFailure, Look, RunChange, RunRecord, Waiter
from .store import NoRun, RunStore


class RunRequest(msgspec.Struct, frozen=True, kw_only=True):
    """On `<prefix>.svc.runs.<agent>` (only that agent's NATS user may publish there): one
    change to run `run_id`, with the chain of the task asking, which the authority verifies."""

    run_id: str
    change: RunChange
    chain: tuple[Link, ...] = ()


class RunReply(msgspec.Struct, frozen=True, kw_only=True):
    record: RunRecord | None  # None: no such run (a `Look` at a run published without submit)
    changed: bool


class RunWriter(Protocol):
    """What the runtime may do to a run's record."""

    async def change(
        self, run_id: str, change: RunChange, chain: tuple[Link, ...]
    ) -> tuple[RunRecord, bool]: ...

    def submitted(self, record: RunRecord, revision: int) -> None:
        """The run's record as its submitter created it, at `revision` (a hint)."""


class DirectRunWriter:
    """Development (no NATS authentication): the agent writes the bucket itself."""

    def __init__(self, store: RunStore, agent: str) -> None:
        self.store = store
        self.agent = agent

    async def change(
        self, run_id: str, change: RunChange, chain: tuple[Link, ...]
    ) -> tuple[RunRecord, bool]:
        del chain
        return await self.store.change(run_id, change, self.agent)

    def submitted(self, record: RunRecord, revision: int) -> None:
        self.store.created_elsewhere(record, revision)


class AuthorityRunWriter:
    """Asks the run authority, which checks that this agent holds the run."""

    def __init__(self, bus: Bus, agent: str) -> None:
        self.bus = bus
        self.subject = bus.subjects.service("runs", agent)

    def submitted(self, record: RunRecord, revision: int) -> None:
        """The authority reads records itself."""

    async def change(
        self, run_id: str, change: RunChange, chain: tuple[Link, ...]
    ) -> tuple[RunRecord, bool]:
        reply = await rpc.call_as(
            self.bus,
            self.subject,
            RunRequest(run_id=run_id, change=change, chain=chain),
            RunReply,
            idempotent=not isinstance(change, CountFailure),  # the rest apply once however sent
        )
        if reply.record is None:
            raise NoRun(f"no run {run_id}")
        return reply.record, reply.changed


async def look(writer: RunWriter, run_id: str, chain: tuple[Link, ...]) -> RunRecord | None:
    """The run's record as the asking agent may see it, or None if there is none yet."""
    try:
        return (await writer.change(run_id, Look(), chain))[0]
    except NoRun:
        return None


def run_writer(bus: Bus, store: RunStore | None, agent: str) -> RunWriter:
    """The authority under NATS authentication (or without a store), else the bucket itself."""
    if bus.settings.nats_auth or store is None:
        return AuthorityRunWriter(bus, agent)
    return DirectRunWriter(store, agent)


__all__ = ["AuthorityRunWriter", "DirectRunWriter", "RunRequest", "RunWriter", "Waiter"]
