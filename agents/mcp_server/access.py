"""Who is calling: over HTTP, the user whose bearer token the identity service verified; over
stdio, the user the launching process names. The token is checked by our identity service and
used only to ask it for the run's root link: it is never forwarded to agents or other servers.

    RelayError
     └── McpRefused             a call or request the MCP server refuses (audited)
          ├── Unauthenticated   HTTP 401: no bearer token, or one that did not authenticate
          └── RunNotFound       no such run — or another user's, which looks the same
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.types import ASGIApp, Receive, Scope, Send

from relaybus.bus import Bus, ConnectionFailed, PermissionDenied, RelayError
from relaybus.services.identity.client import IdentityClient, publish_audit
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.identity.refusals import RefusalAudit

ACTOR = "mcp:server"
DEV_USER = "dev"
TOKEN_TTL_S = 15.0  # a revoked token stops working within this long


class McpRefused(RelayError):
    """A call or request the MCP server refuses; every refusal is audited."""


class Unauthenticated(McpRefused):
    """No bearer token where one is needed, or a token the identity service did not accept."""


class RunNotFound(McpRefused):
    """No such run, or a run another user submitted (the two look the same)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"no run {run_id!r} of yours: the tools `relaybus.run` and `relaybus.cancel` "
            "act only on runs you started (here, or any other way)"
        )
        self.run_id = run_id


@dataclass(frozen=True)
class Caller:
    """The user a call acts for, and the API token that proved it (None: identity is off)."""

    user: str
    token: str | None = None

    @property
    def sender(self) -> str:
        return f"user:{self.user}"

    def owns(self, submitted_by: str) -> bool:
        return submitted_by == self.sender


def refusal(action: str, principal: str, reason: str, **fields: Any) -> AuditRecord:
    return AuditRecord(
        action=action,
        decision="deny",
        principal=principal or "unknown",
        actor=ACTOR,
        reason=reason,
        **fields,
    )


async def audit_refusal(bus: Bus, action: str, principal: str, reason: str, **fields: Any) -> None:
    await publish_audit(bus, refusal(action, principal, reason, **fields))


class TokenGate:
    """Turns a bearer token into a Caller through the identity service; verified tokens are
    remembered for TOKEN_TTL_S (by their hash, never the token itself in a log)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._known: dict[str, tuple[str, float]] = {}

    async def caller(self, token: str) -> Caller:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        found = self._known.get(key)
        if found is not None and found[1] > now:
            return Caller(found[0], token)
        try:
            user = await IdentityClient(self.bus).authenticate(token)
        except PermissionDenied as exc:
            self._known.pop(key, None)
            raise Unauthenticated(
                f"the token was refused by the identity service ({exc}); use a current token "
                "from `relaybus identity user token USER`"
            ) from None
        if len(self._known) > 1000:
            self._known.clear()
        self._known[key] = (user, now + TOKEN_TTL_S)
        return Caller(user, token)


def claimed_user(token: str) -> str:
    """The user an API token names (`rb_<user>_<id>_<secret>`), for the audit of a refusal."""
    parts = token.split("_", 3)
    return parts[1] if len(parts) == 4 and parts[0] == "rb" else "unknown"


def caller_of(scope: Scope) -> Caller | None:
    """The Caller BearerAuth put on a request's scope."""
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser):
        token = user.access_token
        return Caller(token.client_id, token.token or None)
    return None


class BearerAuth:
    """ASGI middleware in front of the MCP endpoint: with identity on, every request needs
    `Authorization: Bearer TOKEN`; a missing or refused token answers 401 with what to do, and
    is audited. With identity off (a dev stack, loopback only), requests act as `user:dev`.

    The verified user goes on the scope as the MCP SDK's AuthenticatedUser, so the SDK binds
    each MCP session to the user that opened it."""

    def __init__(self, app: ASGIApp, bus: Bus, *, identity: bool) -> None:
        self.app = app
        self.bus = bus
        self.identity = identity
        self.gate = TokenGate(bus)
        self.refusals = RefusalAudit(bus)  # anyone can send bad tokens: bounded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        try:
            caller = await self._caller(token)
        except Unauthenticated as exc:
            principal = claimed_user(token) if token else "unknown"
            await self.refusals(refusal("mcp/request", principal, str(exc)))
            await _unauthorized(send, str(exc))
            return
        except ConnectionFailed as exc:
            await _json(send, 503, {"error": "unavailable", "error_description": str(exc)})
            return
        access = AccessToken(
            token=caller.token or "", client_id=caller.user, scopes=[], subject=caller.user
        )
        scope = {**scope, "user": AuthenticatedUser(access)}
        await self.app(scope, receive, send)

    async def _caller(self, token: str | None) -> Caller:
        if not self.identity:
            return Caller(DEV_USER)
        if not token:
            raise Unauthenticated(
                "this MCP server needs a relaybus user token: send `Authorization: Bearer TOKEN` "
                "(`relaybus identity user token USER` prints one)"
            )
        try:
            return await self.gate.caller(token)
        except Unauthenticated as exc:
            raise Unauthenticated(f"{exc}, sent as `Authorization: Bearer TOKEN`") from None


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip() or None
            return None
    return None


async def _unauthorized(send: Send, description: str) -> None:
    header = f'Bearer error="invalid_token", error_description="{_quoted(description)}"'
    await _json(
        send,
        401,
        {"error": "invalid_token", "error_description": description},
        ((b"www-authenticate", header.encode("latin-1", "replace")),),
    )


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


async def _json(
    send: Send, status: int, body: dict[str, str], headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
