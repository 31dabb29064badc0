"""The worker's trust checks: who may send what, the delegation chain at receipt, every tool
call against the chain, and the link an agent adds when it delegates. Each refusal is audited,
counted and reported as a `denied` event of the run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
from opentelemetry.trace import Status, StatusCode

from relaybus.bus import (
    Bus,
    Delivery,
    Envelope,
    PermissionDenied,
    Refused,
    Reject,
    Retry,
    decode,
    metrics,
    tracing,
)
from relaybus.bus.codec import decode_or_none, decode_or_refuse
from relaybus.services.identity.chain import ChainView, decode_body
from relaybus.services.identity.client import IdentityGate, args_digest
from relaybus.services.identity.errors import ChainInvalid, RevocationUnknown
from relaybus.services.identity.messages import AuditRecord

from .journal import JournalStore
from .messages import TimerFired, signal_decoder

if TYPE_CHECKING:
    from .context import Context

log = logging.getLogger("relaybus.worker")
T = TypeVar("T")


class EmitEvent(Protocol):
    def __call__(self, env: Envelope, kind: str, *, detail: str = "") -> Awaitable[None]: ...


class Guard:
    def __init__(
        self,
        bus: Bus,
        name: str,
        gate: IdentityGate | None,
        journals: JournalStore,
        emit_event: EmitEvent,
    ) -> None:
        self.bus = bus
        self.name = name
        self.gate = gate
        self.journals = journals
        self.emit_event = emit_event

    async def refuse(self, env: Envelope, d: Delivery, problem: str) -> None:
        """Refuse a message that is not what it claims (audited, a `denied` event); it is
        dead-lettered at once and changes nothing."""
        sender = d.source or "a user or operator connection"
        reason = f"refused a {env.kind} from {sender} (claims {env.sender!r}): {problem}"
        log.warning("%s", reason)
        if self.gate is not None:
            principal = principal_of(env)
            if not env.chain and env.parent_id:  # the run's user, from the task it aims at
                with contextlib.suppress(Exception):
                    found = await self.journals.load(env.run_id, env.parent_id)
                    if found is not None:
                        principal = principal_of(decode(found[0].task))
            await self.gate.audit(
                AuditRecord(
                    action=f"message/{env.kind}",
                    decision="deny",
                    principal=principal,
                    actor=f"agent:{d.source}" if d.source else "connection",
                    reason=reason,
                    run_id=env.run_id,
                )
            )
        metrics.DENIALS.add(1, {"agent": self.name, "check": "sender"})
        await self.emit_event(env, "denied", detail=reason)
        raise Refused(reason)

    async def verify(self, env: Envelope) -> ChainView:
        assert self.gate is not None
        try:
            return await self.gate.verify(
                env.chain, env.run_id, self.name, task=(env.id, env.payload)
            )
        except RevocationUnknown:
            raise  # an outage, not a bad chain: the caller retries; nothing to audit
        except ChainInvalid as exc:
            principal = principal_of(env)
            await self.gate.audit(
                AuditRecord(
                    action="chain/verify",
                    decision="deny",
                    principal=principal,
                    actor=f"agent:{self.name}",
                    reason=str(exc),
                    run_id=env.run_id,
                )
            )
            metrics.DENIALS.add(1, {"agent": self.name, "check": "chain"})
            await self.emit_event(env, "denied", detail=str(exc))
            raise

    async def authorize(self, ctx: Context, tool: Any, args: Any) -> None:
        """Check a tool call against every link of the verified chain, with the actual arguments."""
        if self.gate is None or ctx.chain is None:
            return
        if not await self.gate.ensure_fresh():  # NATS failing over: fail closed, as a retry
            raise Retry(
                f"{tool.name}: the revocation watch is not live, so the call cannot be checked "
                "yet; the task is retried shortly",
                delay_s=2.0,
            )
        values = args.model_dump(mode="json")
        problem = self.gate.check_tool(ctx.chain, tool.scope, values)
        record = AuditRecord(
            action=f"tool/{tool.scope}",
            decision="deny" if problem else "allow",
            principal=ctx.chain.principal,
            actor=f"agent:{self.name}",
            reason=problem,
            run_id=ctx.run_id,
            tool=tool.name,
            args_digest=args_digest(values),
            chain=ctx.chain.ids,
        )
        await self.gate.audit(record)
        if problem:
            metrics.DENIALS.add(1, {"agent": self.name, "check": "tool"})
            _denied_span(tool, ctx.run_id, problem)
            await self.emit_event(ctx.envelope, "denied", detail=f"{tool.name}: {problem}")
            raise PermissionDenied(f"{tool.name} ({tool.scope}) denied: {problem}")

    async def delegate(self, env: Envelope, scopes: list[str] | None) -> Envelope:
        """Append this agent's stamped delegation link to a child or handoff envelope."""
        if self.gate is None:
            return env
        link = await self.gate.delegate(
            env.chain, env.recipient, scopes, (env.id, env.payload), line=not env.parent_id
        )
        return msgspec.structs.replace(env, chain=(*env.chain, link))


def _denied_span(tool: Any, run_id: str, problem: str) -> None:
    """A refused tool call in the run's trace: an `execute_tool` span with error status."""
    with tracing.TRACER.start_as_current_span(
        f"execute_tool {tool.name}",
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool.name,
            "relaybus.run_id": run_id,
            "relaybus.scope": tool.scope,
            "relaybus.decision": "deny",
            "error.type": "PermissionDenied",
        },
    ) as span:
        span.set_status(Status(StatusCode.ERROR, problem))


def runtime_payload(env: Envelope, decoder: msgspec.json.Decoder[T]) -> T:
    """The payload of a result, error or signal envelope. One that names no waiting task or
    does not decode is refused for good (dead-lettered at once): a retry cannot change it."""
    if not env.parent_id:
        raise Reject(f"a {env.kind} envelope must name the task waiting for it (parent_id)")
    return decode_or_refuse(decoder, env.payload, Reject, f"the {env.kind} payload does not decode")


def sender_problem(d: Delivery, me: str) -> str:
    """Why a delivery is not what it claims to be, or "". The subject's last token names the
    agent that published it (NATS permissions let an agent publish only under its own name);
    a subject without one came from a user or operator connection."""
    env = d.envelope
    if d.source and env.sender != d.source:
        return f"it was published by agent {d.source}"
    if env.kind == "task":
        if env.parent_id and not d.source:
            return "a child task must come from the agent that started it"
        return ""
    if env.kind in ("result", "error"):
        return "" if d.source else "a result must come from the agent that ran the child task"
    body = decode_or_none(signal_decoder, env.payload)
    if body is None:
        return ""  # on_signal refuses it as undecodable
    if isinstance(body, TimerFired):
        return "" if d.source == me else "a timer must come from the agent that set it"
    if d.source:
        return (
            "a signal (approval, rejection, budget resume) must come from a user or operator "
            "connection, never from an agent"
        )
    return ""


def principal_of(env: Envelope) -> str:
    """Who a message acts for, for a gated agent's audit records: its chain's root, else its
    sender, which NATS authenticated (never the unauthenticated `Relay-User`)."""
    try:
        return decode_body(env.chain[0].payload).principal if env.chain else env.sender
    except ChainInvalid:
        return env.sender
