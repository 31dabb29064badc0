"""The run authority: writes run records for agents, after checking that the asking agent
holds the run.

Answers on `<prefix>.svc.runs.<agent>`, a subject only that agent's NATS user may publish, so
the subject names the sender. With identity on, the request's chain must verify for the run
and end at that agent; the change is one of the transitions in `store.apply` (an agent can mark
its run running, finished, failed once more, waiting for a signal, or some of its tasks
cancelled; never who submitted it, nor its signals). Hosted by the identity service's process.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from relaybus.bus import Bus, ConfigError, PermissionDenied
from relaybus.bus.kv import Bucket
from relaybus.bus.rpc import answer
from relaybus.bus.subjects import check_name
from relaybus.services.identity.chain import LinkBody
from relaybus.services.identity.client import IdentityGate, publish_audit
from relaybus.services.identity.errors import ChainInvalid
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.identity.settings import IdentitySettings

from .client import RunReply, RunRequest
from .state import Finish, MarkRunning, RegisterWait, Reopen, RunChange
from .store import NoRun, RunStore

log = logging.getLogger("relaybus.runs")
_request = msgspec.json.Decoder(RunRequest)


class RunAuthority:
    def __init__(self, bus: Bus, store: RunStore, gate: IdentityGate | None) -> None:
        self.bus = bus
        self.store = store
        self.gate = gate

    @classmethod
    async def open(cls, bus: Bus) -> RunAuthority:
        store = RunStore(await Bucket.open(bus, bus.subjects.bucket("runs")))
        identity = IdentitySettings.of(bus.settings).identity
        gate = await IdentityGate.open(bus, "runs", None) if identity else None
        return cls(bus, store, gate)

    async def close(self) -> None:
        await self.store.drain()
        if self.gate is not None:
            await self.gate.close()

    async def handle(self, subject: str, data: bytes) -> bytes:
        agent = subject.rsplit(".", 1)[-1]

        async def work() -> RunReply:
            req = _request.decode(data)
            check_name("run", req.run_id)
            await self._check(agent, req)
            try:
                record, changed = await self.store.change(req.run_id, req.change, agent)
            except NoRun:
                return RunReply(record=None, changed=False)
            return RunReply(record=record, changed=changed)

        return await answer(work, "run", ConfigError)

    async def _check(self, agent: str, req: RunRequest) -> None:
        if self.gate is None:
            return  # identity off: no chains to check (development)
        try:
            view = await self.gate.verify(req.chain, req.run_id, agent)
            problem = _beyond(view.last, req.change)
            if problem:
                raise ChainInvalid(problem)
        except ChainInvalid as exc:
            reason = f"agent {agent} does not hold run {req.run_id}: {exc}"
            await publish_audit(
                self.bus,
                AuditRecord(
                    action=f"run/{type(req.change).__name__}",
                    decision="deny",
                    principal=await self._principal(req),
                    actor=f"agent:{agent}",
                    reason=reason,
                    run_id=req.run_id,
                ),
            )
            raise PermissionDenied(reason) from None

    async def _principal(self, req: RunRequest) -> str:
        """Whose run it is, for the audit: the run record's user (not the request's claim)."""
        record = await self.store.get(req.run_id)
        if record is not None and record.submitted_by.startswith("user:"):
            return record.submitted_by.removeprefix("user:")
        return "unknown"


def _beyond(link: LinkBody, change: RunChange) -> str:
    """Why the task this chain authorizes may not make `change`, or ""."""
    if isinstance(change, MarkRunning | Finish | Reopen) and not link.line:
        return (
            f"task {link.task or '(none)'} is a child call, not the run's line: only the agent "
            "holding the run's line starts, finishes or reopens it"
        )
    if isinstance(change, RegisterWait) and change.task_id != link.task:
        return f"the chain authorizes task {link.task or '(none)'}, not task {change.task_id}"
    return ""


async def serve_runs(bus: Bus) -> Any:
    """Answer run requests on this connection until it closes; returns the subscription."""
    authority = await RunAuthority.open(bus)
    subject = bus.subjects.service_ops("runs")
    sub = await bus.serve(subject, authority.handle, queue="runs", concurrency=32)
    log.info("run authority answering on %s", subject)
    return sub, authority
