"""The ingress: plain tasks from any NATS client become runs.

A client with no relaybus library publishes the task's JSON to `<prefix>.task.<agent>`, with
`Relay-User` and, when identity is on, `Relay-Token` headers (docs/wire.md lists the optional
ones). No agent reads that subject: the ingress does. It checks the body is JSON, has the
identity service authenticate the token and stamp the run's root link (the token goes no
further: agents never see it), records the run and hands the task to the agent on
`<prefix>.task.<agent>.$in`, exactly as `relaybus.Client.submit` does. A refusal is audited
(and, with identity off, published as the run's `denied` event when it names a valid run);
the message is not retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from relaybus.bus import Bus, Event, RelayError, Settings, SubjectInvalid
from relaybus.bus.envelope import derived_id
from relaybus.bus.errors import ConnectionFailed, PermissionDenied
from relaybus.bus.pull import PlainMessage, pull
from relaybus.bus.rpc import reply_ok
from relaybus.bus.runtime import settle_heap, stop_on_signals
from relaybus.bus.streams import default_topology, ensure, ingress_consumer
from relaybus.bus.subjects import check_name, is_name
from relaybus.services.identity.client import IdentityClient
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.identity.refusals import RefusalAudit
from relaybus.services.identity.settings import IdentitySettings

from .submit import RunIdTaken, parse_payload, submit

log = logging.getLogger("relaybus.ingress")

RETRY_DELAY_S = 2.0


class PlainTaskInvalid(RelayError):
    """A plain NATS task the ingress cannot admit as it is: the message says which header or
    what in the body to fix."""


class Admission:
    """What one plain message asks for, read from its subject, headers and body."""

    def __init__(self, bus: Bus, subject: str, headers: Mapping[str, str], body: bytes) -> None:
        self.agent = subject.rsplit(".", 1)[1]
        self.user = headers.get("Relay-User", "").removeprefix(
            "user:"
        )  # `user:alice` names alice too
        self.token = headers.get("Relay-Token") or None
        given = headers.get("Relay-Run")
        self.run_id = given if given and is_name(given) else _default_run_id(headers)
        self.headers = headers
        self.body = body
        self.bus = bus

    def check(self) -> bytes:
        check_name("agent", self.agent)
        if not self.user and IdentitySettings.of(self.bus.settings).identity:
            raise PlainTaskInvalid(
                "identity is on: a plain task names its user in the `Relay-User` header and "
                "carries that user's token in `Relay-Token`"
            )
        check_name("user", self.user or "dev")
        if "Relay-Run" in self.headers and not is_name(self.headers["Relay-Run"]):
            raise PlainTaskInvalid(
                f"header Relay-Run = {self.headers['Relay-Run'][:40]!r} is not a run id "
                "(1-64 of A-Za-z0-9_-); leave the header out to have one derived from "
                "Nats-Msg-Id or the stream sequence"
            )
        check_name("run", self.run_id)
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise PlainTaskInvalid("the task body is not UTF-8 JSON") from None
        return parse_payload(text or "null")

    def number(self, header: str, default: int) -> int:
        text = self.headers.get(header)
        if text is None:
            return default
        if not text.isdigit() or len(text) > 15:
            raise PlainTaskInvalid(f"header {header} = {text[:40]!r} is not a whole number")
        return int(text)


def _default_run_id(headers: Mapping[str, str]) -> str:
    msg_id = headers.get("Nats-Msg-Id", "")
    return derived_id("ingress", msg_id) if msg_id else ""


class Ingress:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.admitted = 0
        self.refused = 0
        self.refusals = RefusalAudit(bus)  # anyone with the client password can send these

    async def run(self, stop: asyncio.Event) -> None:
        log.info("ingress admitting plain tasks from %s", self.bus.subjects.ingress())
        spec = ingress_consumer(self.bus.subjects, self.bus.settings.ack_wait_s)
        await pull(self.bus, spec, self.admit, stop)

    async def admit(self, msg: PlainMessage) -> None:
        headers = msg.headers
        request = Admission(self.bus, msg.subject, headers, msg.data)
        if not request.run_id:  # no Relay-Run (or an invalid one) and no Nats-Msg-Id
            request.run_id = derived_id("ingress-seq", str(msg.sequence))
        try:
            if IdentitySettings.of(self.bus.settings).identity:
                if not request.token or not request.user:
                    raise PermissionDenied(
                        "identity is on: a plain task carries `Relay-User` and that user's "
                        "token in `Relay-Token` (`relaybus identity user token USER` issues one)"
                    )
                await IdentityClient(self.bus).authenticate(request.token, request.user)
            payload = request.check()
            await submit(
                self.bus,
                request.agent,
                payload,
                sender=f"user:{request.user or 'dev'}",
                token=request.token,
                run_id=request.run_id,
                scopes=[s for s in headers.get("Relay-Scopes", "").split(",") if s] or None,
                max_hops=request.number("Relay-Max-Hops", 32),
                max_steps=request.number("Relay-Max-Steps", 0),
                deadline_s=request.number("Relay-Deadline-S", 0) or None,
                budget=request.number("Relay-Budget-Limit", 0) or None,
            )
        except ConnectionFailed as exc:  # identity or JetStream not answering: later
            log.warning("ingress could not admit a task for %s yet: %s", request.agent, exc)
            await msg.nak(RETRY_DELAY_S)
            return
        except (RelayError, SubjectInvalid) as exc:
            self.refused += 1
            await self._refuse(request, exc)
            await msg.term()
            return
        self.admitted += 1
        await msg.ack()

    async def _refuse(self, request: Admission, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("ingress refused a plain task for %r: %s", request.agent[:64], reason)
        identity = IdentitySettings.of(self.bus.settings).identity
        # with identity off a plain task runs as its Relay-User, or as `dev`: audited as them
        user = request.user or ("" if identity else "dev")
        record = AuditRecord(
            action=f"ingress/{request.agent[:64]}",
            decision="deny",
            principal=f"user:{user}" if is_name(user) else "anonymous",
            actor="connection",
            reason=reason[:500],
            run_id=request.run_id if is_name(request.run_id) else "",
        )
        try:
            await self.refusals(record)
        except RelayError as err:
            log.warning("ingress could not audit a refusal: %s", err)
        if identity or not is_name(request.run_id) or isinstance(exc, RunIdTaken):
            # with identity on, a refused caller has proven no run id is theirs: an event on it
            # would let one user write on another's (future) run; the audit record is theirs
            return
        event = Event(run_id=request.run_id, kind="denied", recipient=request.agent, detail=reason)
        try:
            await self.bus.publish_event(event, durable=True)
        except RelayError as err:
            log.warning("ingress could not publish the refusal: %s", err)


async def serve_ingress(settings: Settings) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    settle_heap()
    async with Bus(settings, name="ingress") as bus:
        bus.stop_when_lost(stop)
        await ensure(bus, default_topology(bus.subjects, bus.settings.stream_replicas))
        ingress = Ingress(bus)

        async def ping(_subject: str, _data: bytes) -> bytes:
            return reply_ok({"admitted": ingress.admitted, "refused": ingress.refused})

        sub = await bus.serve(bus.subjects.service("ingress", "ping"), ping, queue="ingress")
        try:
            await ingress.run(stop)
        finally:
            await sub.unsubscribe()
    return 1 if bus.lost else 0
