"""What agents and the CLI use of identity: requests to the service, and the gate every
consumer runs (chain verification, tool checks, revocation watch, audit)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
from nacl.signing import SigningKey, VerifyKey

from relaybus.bus import Bus, ConfigError, Link, PermissionDenied, RelayError, rpc
from relaybus.bus.kvview import WatchedBucket
from relaybus.bus.private import write_private
from relaybus.bus.streams import read_matching
from relaybus.bus.subjects import check_name

from .chain import (
    ChainVerifier,
    ChainView,
    child_body,
    decode_body,
    payload_digest,
    sign_body,
)
from .errors import ChainInvalid, RevocationUnknown
from .messages import (
    AgentAdd,
    AuditRecord,
    Revoke,
    RoleRecord,
    RootRequest,
    StampRequest,
    TokenCheck,
    TokenIssue,
    UserAdd,
)
from .registry import Registry, revocation_key
from .scopes import check, parse_scope, restrict

log = logging.getLogger("relaybus.identity")
READY_S = 10.0  # how long a new gate waits for its revocation view before failing closed
TRUST_ROOT_WAIT_S = 30.0  # how long a new gate waits for the identity service's first start
CONFIRM_S = (
    5.0  # how long a check waits for a revocation view that fell behind before failing closed
)
_ERRORS: dict[str, type[RelayError]] = {
    "PermissionDenied": PermissionDenied,
    "ChainInvalid": ChainInvalid,
    "ConfigError": ConfigError,
}


def agent_key_path(home: Path, agent: str) -> Path:
    """Where an agent's delegation key is kept; refuses a name that is not an agent's (a
    name is a file name here: `../identity/service` would be the trust root's key)."""
    return home / "keys" / f"{check_name('agent', agent)}.seed"


def write_agent_key(home: Path, agent: str, key: SigningKey | None = None) -> SigningKey:
    """Store an agent's delegation key, a new one unless `key` (0600 under RELAYBUS_HOME/keys)."""
    key = key or SigningKey.generate()
    write_private(agent_key_path(home, agent), bytes(key).hex().encode())
    return key


def read_agent_key(home: Path, agent: str) -> SigningKey:
    path = agent_key_path(home, agent)
    try:
        return SigningKey(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        raise ConfigError(
            f"agent {agent} has no delegation key at {path}: register it with "
            f"`relaybus identity agent add {agent} --scope …`"
        ) from None


#: Operations that may be applied twice: signing, reading, setting a state (not `token`, which
#: issues a new secret each time).
IDEMPOTENT = frozenset(
    {
        "authenticate",
        "root",
        "pubkey",
        "agent_list",
        "user_list",
        "revoke",
        "agent_add",
        "user_add",
        "role_add",
    }
)


class IdentityClient:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def call(self, op: str, body: Any, timeout_s: float | None = None) -> Any:
        return await rpc.call(
            self.bus,
            self.bus.subjects.service("identity", op),
            body,
            timeout_s,
            idempotent=op in IDEMPOTENT,  # sent again if the replica that took it died
        )

    async def add_agent(
        self,
        name: str,
        public_key: VerifyKey,
        scopes: list[str],
        handoff_to: list[str],
        nkey: str = "",
    ) -> None:
        body = AgentAdd(
            name=name,
            public_key=bytes(public_key).hex(),
            scopes=scopes,
            handoff_to=handoff_to,
            nkey=nkey,
        )
        await self.call("agent_add", body)

    async def list_agents(self) -> list[dict[str, Any]]:
        return list(await self.call("agent_list", {}))

    async def list_users(self) -> list[dict[str, Any]]:
        """Operator only: every user, with the ids of their live tokens."""
        return list(await self.call("user_list", {}))

    async def add_user(self, user_id: str, scopes: list[str], roles: list[str]) -> None:
        await self.call("user_add", UserAdd(id=user_id, scopes=scopes, roles=roles))

    async def add_role(self, name: str, scopes: list[str]) -> None:
        await self.call("role_add", RoleRecord(name=name, scopes=scopes))

    async def issue_token(self, user_id: str) -> dict[str, str]:
        return dict(await self.call("token", TokenIssue(user=user_id)))

    async def authenticate(self, token: str, user: str = "") -> str:
        """The user this API token belongs to; PermissionDenied if it does not authenticate
        (unknown, wrong, revoked)."""
        body = await self.call("authenticate", TokenCheck(token=token, user=user))
        return str(body["user"])

    async def scopes_of(self, token: str, user: str = "") -> tuple[str, list[str]]:
        """The user this API token belongs to and every scope the user holds (direct and from
        roles); PermissionDenied as `authenticate`."""
        body = await self.call("authenticate", TokenCheck(token=token, user=user))
        return str(body["user"]), [str(s) for s in body.get("scopes", [])]

    async def revoke(self, kind: str, ident: str, reason: str = "", *, user: str = "") -> bool:
        """Revoke `kind` `ident` (a token by its id, issued to `user`); False if it was
        revoked already."""
        body = await self.call("revoke", Revoke(kind=kind, id=ident, reason=reason, user=user))
        return not body.get("already")

    async def root(
        self,
        user: str,
        token: str,
        run_id: str,
        agent: str,
        scopes: list[str] | None = None,
        ttl_s: float = 3600.0,
        *,
        task_id: str = "",
        payload: bytes = b"",
    ) -> Link:
        """The root link of run `run_id`, bound to its first task (`task_id`, `payload`)."""
        body = await self.call(
            "root",
            RootRequest(
                user=user,
                token=token,
                run_id=run_id,
                agent=agent,
                scopes=scopes,
                ttl_s=ttl_s,
                task_id=task_id,
                digest=payload_digest(payload),
            ),
        )
        return msgspec.convert(body, Link)

    async def stamp(self, agent: str, link: Link, chain: list[Link]) -> Link:
        subject = self.bus.subjects.service_from("identity", "stamp", agent)
        body = await rpc.call(
            self.bus, subject, StampRequest(link=link, chain=chain), idempotent=True
        )
        stamp = msgspec.convert(body, dict[str, bytes])["stamp"]
        return Link(payload=link.payload, signature=link.signature, stamp=stamp)


async def _trust_root(registry: Registry, agent: str) -> VerifyKey:
    """The identity service's public key. A process started with (or just before) the identity
    service on a new deployment waits for its first start, bounded: `relaybus up` and compose
    start every service at once."""
    deadline = time.monotonic() + TRUST_ROOT_WAIT_S
    service_key = await registry.service_key()
    if service_key is None:
        log.info("%s waits for the identity service's trust root (its first start)", agent)
    while service_key is None:
        if time.monotonic() > deadline:
            raise ConfigError(
                f"the identity service has not run yet (waited {TRUST_ROOT_WAIT_S:g}s for its "
                "trust root): start it (`relaybus up` does)"
            )
        await asyncio.sleep(0.25)
        service_key = await registry.service_key()
    return service_key


class IdentityGate:
    """Per process: verifies chains, checks tool calls, delegates, audits, watches revocations."""

    def __init__(
        self,
        bus: Bus,
        registry: Registry,
        service_key: VerifyKey,
        agent: str,
        key: SigningKey | None,
    ) -> None:
        self.bus = bus
        self.registry = registry
        self.agent = agent
        self.key = key
        self.client = IdentityClient(bus)
        self._keys: dict[str, VerifyKey] = {}
        # revocations, followed by a watch that a check of the stream keeps honest (kvview)
        self.revoked = WatchedBucket(registry.revoked, bus.nc, misses="absent")
        self.verifier = ChainVerifier(service_key, self._keys.get, self._is_revoked)

    @classmethod
    async def open(cls, bus: Bus, agent: str, key: SigningKey | None) -> IdentityGate:
        registry = await Registry.open(bus)
        service_key = await _trust_root(registry, agent)
        gate = cls(bus, registry, service_key, agent, key)
        for record in await registry.all_agents():
            gate._keys[record.name] = VerifyKey(bytes.fromhex(record.public_key))
        await gate.revoked.__aenter__()
        await gate.revoked.wait_live(READY_S)  # until it is: chain checks fail closed
        return gate

    async def close(self) -> None:
        await self.revoked.close()

    def fresh(self) -> bool:
        """The revocation view is live: its watch runs, caught up and is confirmed current."""
        return self.revoked.live()

    async def ensure_fresh(self) -> bool:
        """Live, or confirmed live by asking the stream now (a busy process's check may be
        late); waits at most `CONFIRM_S` for a watch that is catching up, else False."""
        return self.revoked.live() or await self.revoked.confirm(CONFIRM_S)

    def _is_revoked(self, key: str) -> bool:
        """Whether `key` is revoked. A view that is not live gives no verdict (fail closed,
        RevocationUnknown: the caller retries), never "revoked": that would dead-letter a
        chain nobody revoked while NATS fails over (the view can lapse between the
        `ensure_fresh` before a check and the check itself)."""
        if not self.fresh():
            raise RevocationUnknown(
                "the revocation watch is not live; no verdict on the chain until it is"
            )
        return self.revoked.holds(revocation_key(key))

    async def _agent_key(self, name: str) -> None:
        if name not in self._keys:
            record = await self.registry.agent(name)
            if record is not None:
                self._keys[name] = VerifyKey(bytes.fromhex(record.public_key))

    async def verify(
        self,
        chain: tuple[Link, ...] | list[Link],
        run_id: str,
        recipient: str,
        task: tuple[str, bytes] | None = None,
    ) -> ChainView:
        for link in chain[1:]:
            issuer = decode_body(link.payload).issuer
            if issuer.startswith("agent:"):
                await self._agent_key(issuer.removeprefix("agent:"))
        if not await self.ensure_fresh():
            raise RevocationUnknown(
                "the revocation watch is not live; refusing until it is (fail closed)"
            )
        return self.verifier.verify(chain, run_id, recipient, task=task)

    def check_tool(self, view: ChainView, scope: str, args: dict[str, Any]) -> str:
        """'' if every link allows `scope` with these arguments, else why not."""
        if not self.fresh():
            return "revocation status unknown (watch not live)"
        for index, link in enumerate(view.links):
            problem = check(link.scopes, scope, args, view.principal)
            if problem:
                return f"link {index} ({link.issuer} → {link.subject}): {problem}"
        try:
            for lid in view.ids:
                if self._is_revoked(f"link:{lid}"):
                    return f"link {lid} is revoked"
            for link in view.links:
                for key in (link.issuer, f"agent:{link.subject}", f"user:{link.principal}"):
                    if self._is_revoked(key):
                        return f"{key} is revoked"
        except RevocationUnknown:  # lapsed during the check: refused, as before it
            return "revocation status unknown (watch not live)"
        return ""

    async def delegate(
        self,
        chain: tuple[Link, ...],
        to: str,
        scopes: list[str] | None,
        task: tuple[str, bytes] = ("", b""),
        line: bool = False,
    ) -> Link:
        """A stamped link from this agent to `to` for one task (its id and payload)."""
        if self.key is None:
            raise ConfigError(f"agent {self.agent} has no delegation key")
        parent = chain[-1]
        held = decode_body(parent.payload)
        body = child_body(
            held,
            parent.payload,
            issuer_agent=self.agent,
            subject=to,
            scopes=restrict([parse_scope(s) for s in scopes], held.scopes)
            if scopes is not None
            else None,
            task=task[0],
            digest=payload_digest(task[1]),
            line=line,
        )
        payload, signature = sign_body(body, self.key)
        return await self.client.stamp(
            self.agent, Link(payload=payload, signature=signature), list(chain)
        )

    async def audit(self, record: AuditRecord) -> None:
        await publish_audit(self.bus, record)


def audit_token(principal: str) -> str:
    """The subject token of a principal's audit trail: a user's is their id, named `alice` or
    `user:alice` (records written either way are one trail, which `identity audit alice` reads)."""
    principal = principal.removeprefix("user:")
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in principal)[:64] or "unknown"


async def publish_audit(bus: Bus, record: AuditRecord) -> None:
    """Append one decision to the audit stream (acknowledged by JetStream). An agent's records
    go under its own name (`<prefix>.audit.<principal>.<agent>`), the only audit subject its
    NATS user may publish; services and operators write `<prefix>.audit.<principal>`."""
    subject = bus.subjects.audit(audit_token(record.principal))
    if bus.agent:
        subject = f"{subject}.{bus.agent}"
    await bus.publish_bytes(subject, encode_audit(record))


encode_audit = msgspec.json.Encoder().encode
_audit_decoder = msgspec.json.Decoder(AuditRecord)


async def read_audit(
    bus: Bus, principal: str, *, run_id: str = "", decision: str = ""
) -> list[AuditRecord]:
    """The decisions recorded for `principal`, oldest first, optionally of one run or decision."""
    subject = bus.subjects.audit(audit_token(principal))
    stream = bus.subjects.stream("AUDIT")
    found = [
        *await read_matching(bus, stream, subject),
        *await read_matching(bus, stream, subject + ".*"),
    ]
    records = []
    for _, stored_on, data in sorted(found):
        record = _audit_decoder.decode(data)
        writer = stored_on[len(subject) + 1 :]
        if writer:  # an agent wrote it: it speaks only as itself, whatever the record claims
            record = msgspec.structs.replace(record, actor=f"agent:{writer}")
        records.append(record)
    return [
        r
        for r in records
        if (not run_id or r.run_id == run_id) and (not decision or r.decision == decision)
    ]


def args_digest(args: dict[str, Any]) -> str:
    return hashlib.sha256(msgspec.json.encode(args, order="sorted")).hexdigest()[:16]
