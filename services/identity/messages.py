"""What goes over `relay.svc.identity.*` and `relay.audit.*` (JSON)."""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec

from relaybus.bus import Link


class AgentRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A registered agent: its delegation key, the scopes it may ever hold, whom it may hand to."""

    name: str
    public_key: str  # hex Ed25519 verify key
    scopes: list[str] = []
    handoff_to: list[str] = []
    revoked: bool = False
    nkey: str = ""  # public NATS user key (connection identity, distinct from the delegation key)


class UserRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    scopes: list[str] = []
    roles: list[str] = []
    tokens: dict[str, str] = {}  # token id → sha256 of the secret
    revoked: bool = False


class RoleRecord(msgspec.Struct, kw_only=True):
    name: str
    scopes: list[str]


class ServiceInfo(msgspec.Struct, kw_only=True):
    public_key: str


class AgentAdd(msgspec.Struct, kw_only=True):
    name: str
    public_key: str
    scopes: list[str] = []
    handoff_to: list[str] = []
    nkey: str = ""


class UserAdd(msgspec.Struct, kw_only=True):
    id: str
    scopes: list[str] = []
    roles: list[str] = []


class TokenIssue(msgspec.Struct, kw_only=True):
    user: str


class Revoke(msgspec.Struct, kw_only=True):
    kind: str  # agent | user | token | link
    id: str  # a token's: its 8-hex-digit id, never the token itself
    reason: str = ""
    user: str = ""  # a token's user: the token id must be one issued to them


class TokenCheck(msgspec.Struct, kw_only=True):
    """Whose API token is this (a console login)? Answered with the user, if it authenticates."""

    token: str
    user: str = ""  # default: the user the token names (`rb_<user>_<id>_<secret>`)


class RootRequest(msgspec.Struct, kw_only=True):
    user: str
    token: str
    run_id: str
    agent: str
    scopes: list[str] | None = None
    ttl_s: float = 3600.0
    task_id: str = ""  # the run's first task, which the root link authorizes ...
    digest: bytes = b""  # ... with this payload digest (chain.payload_digest)


class StampRequest(msgspec.Struct, kw_only=True):
    """An agent asks the service to countersign a delegation it signed."""

    link: Link
    chain: list[Link]


class AuditRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One authorization decision, on `relay.audit.<principal>` (a stream nobody may purge)."""

    action: str
    decision: str  # allow | deny
    principal: str
    actor: str
    time: float = msgspec.field(default_factory=time.time)
    reason: str = ""
    run_id: str = ""
    tool: str = ""
    args_digest: str = ""
    chain: list[str] = []
    detail: dict[str, Any] = {}


REQUESTS: dict[str, type | None] = {
    "agent_add": AgentAdd,
    "agent_list": None,
    "user_list": None,
    "user_add": UserAdd,
    "role_add": RoleRecord,
    "token": TokenIssue,
    "revoke": Revoke,
    "pubkey": None,
    "root": RootRequest,
    "authenticate": TokenCheck,
    "stamp": StampRequest,
}
"""The request body of each `<prefix>.svc.identity.<op>` (None: the body is ignored); `stamp`
arrives on `…identity.stamp.<agent>`, the sender named by the subject."""


# the secret is `secrets.token_urlsafe(24)`: 32 characters. Matched from the right, so a user
# id holding `_<8 hex>_` itself (`svc_20240101_bot`) is named whole
_TOKEN = re.compile(r"^rb_(?P<user>.+)_[0-9a-f]{8}_[A-Za-z0-9_-]{32}$")


def token_id_of(token: str) -> str:
    """The id of a whole API token `rb_<user>_<id>_<secret>`; "" for anything else."""
    return token[-41:-33] if _TOKEN.match(token) else ""


def token_user(token: str) -> str:
    """The user an API token `rb_<user>_<id>_<secret>` names (a user id may hold `_`); for a
    malformed one, its second part, so a refusal names who it claimed to be. Unverified: the
    identity service checks the token belongs to that user."""
    named = _TOKEN.match(token)
    if named:
        return named["user"]
    parts = token.split("_", 3)
    return parts[1] if len(parts) == 4 else ""
