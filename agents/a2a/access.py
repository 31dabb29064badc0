"""Who calls: an A2A caller's bearer token, verified by the identity service, names the user a
run is submitted for (its root link), as `relaybus.Client(user=..., token=...)` does.

    401 Unauthorized   no `Authorization: Bearer TOKEN`, or a token the identity service refused
    400                a token in the URL (tokens never travel in URLs)

Every refusal is appended to the audit stream (principal `a2a:anonymous` when no user is known).
Agent Cards are public (A2A clients read them before they authenticate). On a stack without
identity there are no tokens: the server listens on loopback only and every caller is `dev`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from relaybus.bus import Bus, ConnectionFailed, ErrorInfo, PermissionDenied, RelayError
from relaybus.services.identity.client import IdentityClient
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.identity.refusals import RefusalAudit

from ..console.access import token_in_url

ANONYMOUS = "a2a:anonymous"
TOKEN_TTL_S = 15.0  # a revoked token stops working within this long
CARD_SUFFIX = "/.well-known/agent-card.json"


class CallerUnauthorized(RelayError):
    """An A2A call without a bearer token, or with one the identity service refused (401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"{reason}: send `Authorization: Bearer TOKEN` with a relaybus user token "
            "(`relaybus identity user token USER`)"
        )
        self.reason = reason

    def details(self) -> dict[str, str | int | float | bool]:
        return {"reason": self.reason}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        return cls(str(info.details.get("reason", "")))


@dataclass(frozen=True)
class Caller:
    """The user an A2A request acts for, and the token that proved it (None without identity)."""

    user: str
    token: str | None


class TokenCheck:
    """Bearer token → user, through the identity service; verified tokens are remembered for
    TOKEN_TTL_S (by their hash)."""

    def __init__(self, bus: Bus, identity_on: bool) -> None:
        self.bus = bus
        self.identity_on = identity_on
        self._known: dict[str, tuple[str, float]] = {}

    async def caller(self, authorization: str) -> Caller:
        if not self.identity_on:
            return Caller(user="dev", token=None)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise CallerUnauthorized("no bearer token")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        found = self._known.get(key)
        if found is not None and found[1] > now:
            return Caller(user=found[0], token=token)
        try:
            user = await IdentityClient(self.bus).authenticate(token)
        except PermissionDenied as exc:
            self._known.pop(key, None)
            raise CallerUnauthorized(f"the token was refused ({exc})") from None
        except ConnectionFailed as exc:
            raise ConnectionFailed(f"cannot check the token: {exc}") from None
        if len(self._known) > 1000:
            self._known.clear()
        self._known[key] = (user, now + TOKEN_TTL_S)
        return Caller(user=user, token=token)


def refusal(action: str, reason: str, **detail: Any) -> AuditRecord:
    return AuditRecord(
        action=action,
        decision="deny",
        principal=ANONYMOUS,
        actor="a2a:gateway",
        reason=reason,
        detail=detail,
    )


class BearerAuth:
    """ASGI middleware: every request but an Agent Card needs a token; the verified caller is
    put in the request scope (`scope["relaybus.caller"]`, and `scope["user"]` for the SDK)."""

    def __init__(self, app: Any, check: TokenCheck) -> None:
        self.app = app
        self.check = check
        self.refusals = RefusalAudit(check.bus)  # anyone can send bad tokens: bounded

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, query = scope.get("path", ""), scope.get("query_string", b"").decode("latin-1")
        if (where := token_in_url(path, query)) != "":
            await self.refusals(refusal("a2a/call", f"token in {where}", path=path[:200]))
            await _refuse(send, 400, f"refused: {where} would carry an API token; tokens never "
                          "travel in URLs — send `Authorization: Bearer TOKEN` and revoke this one")  # fmt: skip
            return
        if scope.get("method") == "GET" and path.endswith(CARD_SUFFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            caller = await self.check.caller(headers.get("authorization", ""))
        except CallerUnauthorized as exc:
            await self.refusals(refusal("a2a/call", exc.reason, path=path[:200]))
            await _refuse(send, 401, str(exc), {"www-authenticate": 'Bearer realm="relaybus"'})
            return
        scope["relaybus.caller"] = caller
        scope["user"] = _User(caller.user)
        await self.app(scope, receive, send)


class _User:
    """What Starlette's `request.user` gives the SDK (its task store keys tasks by this name,
    so a user never finds another user's task)."""

    def __init__(self, name: str) -> None:
        self.display_name = name
        self.is_authenticated = True


async def _refuse(
    send: Any, status: int, message: str, extra: dict[str, str] | None = None
) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
