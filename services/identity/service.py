"""`relaybus service identity`: the certificate and policy authority.

Answers on `<prefix>.svc.identity.<op>`; delegations arrive on `…identity.stamp.<agent>`, a
subject only that agent's NATS user may publish to, so the subject names the sender.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nacl.signing import SigningKey, VerifyKey

from relaybus.bus import (
    Bus,
    ConfigError,
    Link,
    PermissionDenied,
    RelayError,
    Settings,
    default_topology,
    ensure,
)
from relaybus.bus.micro import Endpoint, MicroService, json_schema
from relaybus.bus.rpc import answer
from relaybus.bus.runtime import settle_heap, stop_on_signals
from relaybus.bus.streams import ensure_agent_consumers
from relaybus.bus.subjects import check_name
from relaybus.services.identity.settings import IdentitySettings
from relaybus.services.identity.trust_root import open_trust_root

from .chain import (
    DEFAULT_DEPTH,
    ChainVerifier,
    LinkBody,
    decode_body,
    new_nonce,
    sign_body,
    stamp_payload,
)
from .client import publish_audit
from .errors import ChainInvalid
from .messages import (
    REQUESTS,
    AgentAdd,
    AgentRecord,
    AuditRecord,
    Revoke,
    RoleRecord,
    RootRequest,
    StampRequest,
    TokenCheck,
    TokenIssue,
    UserAdd,
    UserRecord,
    token_user,
)
from .refusals import RefusalAudit
from .registry import Registry
from .scopes import all_narrow, parse_scope, within

log = logging.getLogger("relaybus.identity")
_TOKEN_ID = re.compile(r"^[0-9a-f]{8}$")
_LINK_ID = re.compile(r"^[0-9a-f]{32}$")
_USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class IdentityService:
    def __init__(self, bus: Bus, registry: Registry, key: SigningKey) -> None:
        self.bus = bus
        self.max_root_ttl_s = IdentitySettings.of(bus.settings).identity_max_root_ttl_s
        self.registry = registry
        self.key = key
        self._keys: dict[str, VerifyKey] = {}
        self.verifier = ChainVerifier(key.verify_key, self._keys.get)
        self.bad_tokens = RefusalAudit(bus)  # whoever reaches a door can send bad tokens
        # verifiers in this process that may take the root links it signs as verified
        self.vouch_roots: list[Callable[[Link], None]] = [self.verifier.vouch]

    async def handle(self, subject: str, data: bytes) -> bytes:
        op = subject.split(".svc.identity.", 1)[1]

        async def work() -> Any:
            if op.startswith("stamp."):
                return await self.stamp(op.removeprefix("stamp."), data)
            handler = self.ops.get(op)
            if handler is None:
                raise RelayError(f"unknown identity operation {op!r}")
            return await handler(self, data)

        return await answer(work, "identity", ConfigError)

    # -- administration ------------------------------------------------------------------

    async def agent_add(self, data: bytes) -> Any:
        req = msgspec.json.decode(data, type=AgentAdd)
        check_name("agent", req.name)
        for scope in req.scopes:
            parse_scope(scope)
        try:
            VerifyKey(bytes.fromhex(req.public_key))
        except ValueError:  # not hex, or not 32 bytes (nacl's error is a ValueError too)
            raise ConfigError(
                f"agent {req.name}: public_key must be an Ed25519 key in 64 hex digits"
            ) from None
        record = AgentRecord(
            name=req.name,
            public_key=req.public_key,
            scopes=req.scopes,
            handoff_to=req.handoff_to,
            nkey=req.nkey,
        )
        await self.registry.put_agent(record)
        await ensure_agent_consumers(self.bus, req.name)
        await self.audit(
            "agent/add", "allow", "admin", "admin", detail={"agent": req.name, "scopes": req.scopes}
        )
        return {"name": req.name}

    async def agent_list(self, data: bytes) -> Any:
        return [msgspec.to_builtins(a) for a in await self.registry.all_agents()]

    async def user_list(self, data: bytes) -> Any:
        """Every user with scopes, roles and the ids of their live tokens (never a token's
        hash): the id is what `identity user revoke USER --token ID` takes."""
        out = []
        for user in await self.registry.all_users():
            live = [
                t for t in sorted(user.tokens) if not await self.registry.is_revoked(f"token:{t}")
            ]
            revoked = user.revoked or await self.registry.is_revoked(f"user:{user.id}")
            out.append(
                {
                    "id": user.id,
                    "scopes": user.scopes,
                    "roles": user.roles,
                    "tokens": live,
                    "revoked": revoked,
                }
            )
        return out

    async def user_add(self, data: bytes) -> Any:
        req = msgspec.json.decode(data, type=UserAdd)
        check_name("user", req.id)
        for scope in req.scopes:
            parse_scope(scope)
        for role in req.roles:
            if await self.registry.role(role) is None:
                raise ConfigError(
                    f"no role {role!r}; add it with `relaybus identity role add {role} --scope …`"
                )
        await self.registry.change_user(
            req.id,
            lambda existing: UserRecord(
                id=req.id,
                scopes=req.scopes,
                roles=req.roles,
                tokens=existing.tokens if existing else {},
            ),
        )
        await self.audit(
            "user/add", "allow", req.id, "admin", detail={"scopes": req.scopes, "roles": req.roles}
        )
        return {"id": req.id}

    async def role_add(self, data: bytes) -> Any:
        req = msgspec.json.decode(data, type=RoleRecord)
        for scope in req.scopes:
            parse_scope(scope)
        await self.registry.put_role(req)
        return {"name": req.name}

    async def token_issue(self, data: bytes) -> Any:
        req = msgspec.json.decode(data, type=TokenIssue)
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(24)

        def add_token(user: UserRecord | None) -> UserRecord:
            if user is None:
                raise ConfigError(f"no user {req.user!r}; add it with `relaybus identity user add`")
            user.tokens[token_id] = token_hash(secret)
            return user

        await self.registry.change_user(req.user, add_token)
        await self.audit("user/token", "allow", req.user, "admin", detail={"token_id": token_id})
        return {
            "user": req.user,
            "token_id": token_id,
            "token": f"rb_{req.user}_{token_id}_{secret}",
        }

    async def revoke(self, data: bytes) -> Any:
        req = msgspec.json.decode(data, type=Revoke)
        if req.kind not in ("agent", "user", "token", "link"):
            raise ConfigError(f"cannot revoke a {req.kind!r}: use agent, user, token or link")
        if req.kind in ("agent", "user"):  # a mistyped name must not look revoked
            check_name(req.kind, req.id)
            found = (
                await self.registry.agent(req.id)
                if req.kind == "agent"
                else await self.registry.user(req.id)
            )
            if found is None:
                listed = (
                    "`relaybus identity agent list` lists the agents"
                    if req.kind == "agent"
                    else "`relaybus identity user list` lists the users"
                )
                refused = (
                    f"no {req.kind} {req.id!r} is registered, so nothing was revoked; check the "
                    f"name ({listed})"
                )
                await self.audit(f"{req.kind}/revoke", "deny", "admin", "admin", reason=refused)
                raise ConfigError(refused)
        if req.kind == "token":
            await self._check_token_revoke(req)
        if req.kind == "link" and not _LINK_ID.match(req.id):  # a typo must not look revoked
            refused = (
                f"{req.id[:40]!r} is not a link id (32 hex digits); `relaybus identity chain RUN`"
                " lists a run's links"
            )
            await self.audit("link/revoke", "deny", "admin", "admin", reason=refused)
            raise ConfigError(refused)
        if await self.registry.is_revoked(f"{req.kind}:{req.id}"):
            return {"revoked": f"{req.kind}:{req.id}", "already": True}
        await self.registry.revoke(f"{req.kind}:{req.id}", req.reason)
        if req.kind == "agent" and (record := await self.registry.agent(req.id)) is not None:
            # the record too: the NATS authorization block drops a revoked agent's user
            await self.registry.put_agent(msgspec.structs.replace(record, revoked=True))
        await self.audit(
            f"{req.kind}/revoke",
            "allow",
            req.id if req.kind == "user" else "admin",
            "admin",
            reason=req.reason,
        )
        return {"revoked": f"{req.kind}:{req.id}"}

    async def _check_token_revoke(self, req: Revoke) -> None:
        """A token is revoked by its id (a whole token would put its secret in the revocation
        list, and revoke nothing), and only one issued to the user named."""
        refused = ""
        if not _TOKEN_ID.match(req.id):
            refused = (
                f"{req.id[:12]!r}… is not a token id: give the 8 hex digits after the user in "
                "rb_<user>_<id>_… (or the whole token to the CLI, which sends only its id)"
            )
        elif req.user:
            user = (
                await self.registry.user(req.user, current=True)
                if _USER_ID.match(req.user)
                else None
            )
            if user is None or req.id not in user.tokens:
                refused = f"user {req.user[:64]!r} has no token {req.id}; nothing was revoked"
        if refused:
            await self.audit("token/revoke", "deny", "admin", "admin", reason=refused)
            raise ConfigError(refused)

    async def public_key(self, data: bytes) -> Any:
        return {"public_key": bytes(self.key.verify_key).hex()}

    # -- grants --------------------------------------------------------------------------

    async def root(self, data: bytes) -> Any:
        """Authenticate a user and stamp the root link of a new run's chain."""
        req = msgspec.json.decode(data, type=RootRequest)
        try:
            # A root without a task (the memory CLI's direct calls) authorizes no task: every
            # consumer checks that the chain's last link names the task it received.
            if not 0 < req.ttl_s <= self.max_root_ttl_s:
                raise ConfigError(
                    f"a root link may live at most {self.max_root_ttl_s:g}s (asked "
                    f"{req.ttl_s:g}s); RELAYBUS_IDENTITY_MAX_ROOT_TTL_S sets the cap"
                )
            user = await self._authenticate(req.user, req.token)
            scopes = [parse_scope(s) for s in user.scopes]
            for role in user.roles:
                found = await self.registry.role(role)
                scopes += [parse_scope(s) for s in (found.scopes if found else [])]
            if req.scopes is not None:
                wanted = [parse_scope(s) for s in req.scopes]
                wider = all_narrow(wanted, scopes)
                if wider is not None:
                    raise PermissionDenied(f"user {req.user} does not hold {wider}")
                scopes = wanted
            target = await self.registry.agent(req.agent) if req.agent else None
            if req.task_id and (
                target is None
                or target.revoked
                or await self.registry.is_revoked(f"agent:{req.agent}")
            ):
                raise PermissionDenied(
                    f"{req.agent!r} is not a registered, unrevoked agent; a run starts only at "
                    "one (`relaybus identity agent add`)"
                )
            if target is not None:  # a run starts with no more than its agent may ever hold
                scopes = within(scopes, [parse_scope(s) for s in target.scopes])
        except RelayError as exc:
            await self.audit(
                "run/root", "deny", req.user, f"user:{req.user}", reason=str(exc), run_id=req.run_id
            )
            raise
        now = time.time()
        body = LinkBody(
            run_id=req.run_id,
            issuer=f"user:{req.user}",
            subject=req.agent,
            principal=req.user,
            scopes=tuple(scopes),
            nbf=now,
            exp=now + req.ttl_s,
            depth=DEFAULT_DEPTH,
            nonce=new_nonce(),
            task=req.task_id,
            digest=req.digest,
            line=True,
        )
        payload, signature = sign_body(body, self.key)
        stamp = stamp_payload(payload, self.key)
        for vouch in self.vouch_roots:
            vouch(Link(payload=payload, signature=signature, stamp=stamp))
        await self.audit(
            "run/root",
            "allow",
            req.user,
            f"user:{req.user}",
            run_id=req.run_id,
            detail={"agent": req.agent, "scopes": [str(s) for s in scopes]},
        )
        return {"payload": payload, "signature": signature, "stamp": stamp}

    async def authenticate(self, data: bytes) -> Any:
        """Check a user's API token without issuing anything (the console's login); a refusal
        is audited."""
        req = msgspec.json.decode(data, type=TokenCheck)
        user_id = req.user or token_user(req.token)
        try:
            user = await self._authenticate(user_id, req.token)
        except RelayError as exc:
            await self.bad_tokens(
                AuditRecord(
                    action="user/authenticate",
                    decision="deny",
                    principal=user_id[:64] or "unknown",
                    actor=f"user:{user_id[:64]}",
                    reason=str(exc),
                )
            )
            raise
        scopes = list(user.scopes)
        for role in user.roles:
            found = await self.registry.role(role)
            scopes += found.scopes if found else []
        return {"user": user.id, "roles": user.roles, "scopes": scopes}

    async def _authenticate(self, user_id: str, token: str) -> UserRecord:
        if not _USER_ID.match(user_id):  # not a name any user has (nor a KV key)
            raise PermissionDenied(f"user {user_id[:64]!r} could not be authenticated")
        # `rb_<user>_<id>_<secret>`: a user id may hold `_` itself, so the user named is matched
        # as a prefix, and the 8-hex-digit token id after it
        prefix = f"rb_{user_id}_"
        rest = token[len(prefix) :].split("_", 1) if token.startswith(prefix) else []
        if len(rest) != 2 or not _TOKEN_ID.match(rest[0]):
            raise PermissionDenied(f"user {user_id!r} could not be authenticated")
        token_id, secret = rest
        user = await self.registry.user(user_id)
        if user is None or token_id not in user.tokens:  # issued a moment ago, by another replica?
            user = await self.registry.user(user_id, current=True)
        stored = user.tokens.get(token_id) if user is not None else None
        if user is None or stored is None or not hmac.compare_digest(stored, token_hash(secret)):
            raise PermissionDenied(f"user {user_id!r} could not be authenticated")
        if user.revoked or await self.registry.is_revoked(f"user:{user_id}"):
            raise PermissionDenied(f"user {user_id!r} is revoked")
        if await self.registry.is_revoked(f"token:{token_id}"):
            raise PermissionDenied(f"token {token_id} of {user_id!r} is revoked")
        return user

    async def stamp(self, sender: str, data: bytes) -> Any:
        """Countersign a delegation after checking sender, attenuation, policy and revocation."""
        req = msgspec.json.decode(data, type=StampRequest)
        body = decode_body(req.link.payload)
        principal = body.principal
        try:
            if body.issuer != f"agent:{sender}":
                raise ChainInvalid(f"{sender} asked to stamp a link issued by {body.issuer}")
            issuer = await self._agent(sender)
            target = await self.registry.agent(body.subject)
            if (
                target is None
                or target.revoked
                or await self.registry.is_revoked(f"agent:{body.subject}")
            ):
                raise PermissionDenied(f"{body.subject} is not a registered, unrevoked agent")
            if body.subject not in issuer.handoff_to:
                raise PermissionDenied(f"policy does not allow {sender} → {body.subject}")
            cannot_hold = all_narrow(body.scopes, [parse_scope(s) for s in target.scopes])
            if cannot_hold is not None:
                raise PermissionDenied(f"{body.subject} may never hold {cannot_hold}")
            await self._load_keys([*req.chain, req.link])
            unsigned = type(req.link)(
                payload=req.link.payload,
                signature=req.link.signature,
                stamp=stamp_payload(req.link.payload, self.key),
            )
            self.verifier.is_revoked = self._revoked_cache(
                await self._revocations([*req.chain, unsigned])
            )
            self.verifier.verify([*req.chain, unsigned], body.run_id, body.subject)
        except RelayError as exc:
            await self.audit(
                "chain/delegate",
                "deny",
                principal,
                f"agent:{sender}",
                reason=str(exc),
                run_id=body.run_id,
                detail={"to": body.subject},
            )
            raise
        await self.audit(
            "chain/delegate",
            "allow",
            principal,
            f"agent:{sender}",
            run_id=body.run_id,
            detail={"to": body.subject, "scopes": [str(s) for s in body.scopes]},
        )
        return {"stamp": unsigned.stamp}

    async def _agent(self, name: str) -> AgentRecord:
        record = await self.registry.agent(name)
        if record is None or record.revoked or await self.registry.is_revoked(f"agent:{name}"):
            raise PermissionDenied(f"{name} is not a registered, unrevoked agent")
        return record

    async def _load_keys(self, chain: list[Any]) -> None:
        for link in chain:
            issuer = decode_body(link.payload).issuer
            if issuer.startswith("agent:"):
                name = issuer.removeprefix("agent:")
                record = await self.registry.agent(name)
                if record is not None:
                    self._keys[name] = VerifyKey(bytes.fromhex(record.public_key))

    async def _revocations(self, chain: list[Any]) -> set[str]:
        from .chain import link_id

        keys: set[str] = set()
        for link in chain:
            body = decode_body(link.payload)
            for key in (
                f"link:{link_id(link.payload)}",
                body.issuer,
                f"agent:{body.subject}",
                f"user:{body.principal}",
            ):
                if await self.registry.is_revoked(key):
                    keys.add(key)
        return keys

    @staticmethod
    def _revoked_cache(keys: set[str]) -> Callable[[str], bool]:
        return keys.__contains__

    async def audit(
        self, action: str, decision: str, principal: str, actor: str, **fields: Any
    ) -> None:
        record = AuditRecord(
            action=action, decision=decision, principal=principal, actor=actor, **fields
        )
        await publish_audit(self.bus, record)

    ops: dict[str, Callable[[IdentityService, bytes], Awaitable[Any]]] = {
        "agent_add": agent_add,
        "agent_list": agent_list,
        "user_list": user_list,
        "user_add": user_add,
        "role_add": role_add,
        "token": token_issue,
        "revoke": revoke,
        "pubkey": public_key,
        "root": root,
        "authenticate": authenticate,
    }


async def serve_identity(settings: Settings) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    settle_heap()
    seed_file = IdentitySettings.of(settings).identity_seed_file or (
        settings.home.resolve() / "identity" / "service.seed"
    )
    async with Bus(settings, name="identity") as bus:
        bus.stop_when_lost(stop)
        await ensure(bus, default_topology(bus.subjects, bus.settings.stream_replicas))
        async with Registry.watched(bus) as registry:
            key = await open_trust_root(registry, seed_file)
            for agent in await registry.all_agents():  # consumers of agents registered before
                if not agent.revoked:
                    await ensure_agent_consumers(bus, agent.name)
            service = IdentityService(bus, registry, key)
            async with identity_micro(bus, service):
                log.info("identity service answering on %s", bus.subjects.service_all("identity"))
                from relaybus.services.runs.service import (
                    serve_runs,  # the run authority shares this process
                )

                runs_sub, authority = await serve_runs(bus)
                if authority.gate is not None:  # it checks next the roots this service signs
                    service.vouch_roots.append(authority.gate.verifier.vouch)
                await stop.wait()
                await runs_sub.unsubscribe()
                await authority.close()
    return 1 if bus.lost else 0


def identity_micro(bus: Bus, service: IdentityService) -> MicroService:
    """`relaybus-identity`: one endpoint per operation on `<prefix>.svc.identity.<op>`, and
    `stamp` on `…identity.stamp.*` (the sender's name as the last token)."""

    def endpoint(op: str, subject: str) -> Endpoint:
        return Endpoint(
            name=op,
            subject=subject,
            handler=service.handle,
            request_schema=json_schema(REQUESTS[op]),
        )

    ops = [endpoint(op, bus.subjects.service("identity", op)) for op in IdentityService.ops]
    stamps = endpoint("stamp", bus.subjects.service("identity", "stamp") + ".*")
    return MicroService(
        bus,
        name="relaybus-identity",
        description="relaybus identity: users, agents, tokens, revocation, delegation stamps",
        queue="identity",
        concurrency=32,  # stamps and roots wait on registry reads: overlap them
        endpoints=[*ops, stamps],
        unmatched=(bus.subjects.service_all("identity"), service.handle),
    )
