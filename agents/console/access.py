"""Who is looking: the local operator (console bound to loopback, no token) or a user whose API
token the identity service verified. A user sees only runs whose principal is that user.

    RelayError
     └── ConsoleError           carries the HTTP status it answers with (400 unless below)
          ├── TokenInUrl        400: an API token in a query string or path (never accepted)
          ├── VerdictInvalid    400: an approve / reject request that is not just the button
          ├── Unauthorized      401: a token is needed, or the one given did not authenticate
          ├── NotFound          404: no such run / dead letter, or not one this viewer may see
          └── Conflict          409: the run does not wait for that signal (any more)
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from relaybus.bus import Bus, ConnectionFailed, PermissionDenied, RelayError
from relaybus.services.identity.client import IdentityClient

COOKIE = "relaybus_token"
TOKEN_TTL_S = 15.0  # a revoked token stops working within this long


class ConsoleError(RelayError):
    """A request the console refuses; `status` is its HTTP status."""

    status = 400


class TokenInUrl(ConsoleError):
    """A request that carries an API token in its URL: refused whatever it asks for."""


class VerdictInvalid(ConsoleError):
    """An approve / reject request with anything but the decision its button stands for."""


class Unauthorized(ConsoleError):
    """No token where one is needed, or a token the identity service did not accept."""

    status = 401


class NotFound(ConsoleError):
    """No such run or dead letter — or one of another tenant, which looks the same."""

    status = 404


class Conflict(ConsoleError):
    """The action does not fit the run's state (e.g. it waits for no such signal)."""

    status = 409


# Query parameters that would carry a credential, and the shape of an API token
# (`rb_USER_TOKENID_SECRET`, see `relaybus identity user token`) anywhere in a path or query.
TOKEN_PARAMS = frozenset(
    {"token", "access_token", "api_token", "api_key", "apikey", "key", "auth", "authorization",
     "bearer", "jwt", "session", "password", "secret", COOKIE}
)  # fmt: skip
TOKEN_SHAPE = re.compile(r"rb_[^/?&#\s]+_[0-9a-f]{8}_[A-Za-z0-9_-]{16,}")


def token_in_url(path: str, query: str) -> str:
    """Why this URL must be refused ('' if it carries no credential): a token-named query
    parameter, or an API token anywhere in the path or query."""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower() in TOKEN_PARAMS:
            return f"the query parameter {name!r}"
        if TOKEN_SHAPE.search(value):
            return f"the value of query parameter {name!r}"
    if TOKEN_SHAPE.search(unquote(path)) or TOKEN_SHAPE.search(unquote(query)):
        return "the URL"
    return ""


def token_in_url_error(where: str) -> TokenInUrl:
    return TokenInUrl(
        f"refused: {where} would carry an API token, and tokens never travel in URLs (they end "
        "up in logs, browser history and Referer headers). Sign in with POST /api/login "
        '{"token": "…"} (the page does; it sets an HttpOnly, SameSite=Strict cookie) or send '
        "`Authorization: Bearer TOKEN`. Treat a token that was in a URL as exposed: revoke it "
        "(`relaybus identity user revoke USER --token ID`) and issue a new one."
    )


def is_loopback(host: str) -> bool:
    """Only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Viewer:
    """`user` None: the local operator, who sees everything."""

    user: str | None = None
    scopes: tuple[str, ...] = ()  # what the user holds: `review…` ones open the review queue

    @property
    def actor(self) -> str:
        return f"user:{self.user}" if self.user else "console:operator"

    def sees(self, owner: str) -> bool:
        """May this viewer see a run whose principal is `owner` (`user:ID`)?"""
        return self.user is None or owner == f"user:{self.user}"


OPERATOR = Viewer()


class Gate:
    """Turns a request's token into a Viewer. Bound to loopback, no token means the operator;
    anywhere else a token is required. Verified tokens are remembered for TOKEN_TTL_S."""

    def __init__(self, bus: Bus, host: str) -> None:
        self.bus = bus
        self.local = is_loopback(host)
        self._known: dict[str, tuple[str, tuple[str, ...], float]] = {}

    async def viewer(self, token: str | None) -> Viewer:
        if not token:
            if self.local:
                return OPERATOR
            raise Unauthorized(
                "this console is not bound to loopback: sign in with a user token "
                "(`relaybus identity user token USER`), as `Authorization: Bearer TOKEN` or on the page"
            )
        user, scopes = await self._lookup(token)
        return Viewer(user=user, scopes=scopes)

    async def user_of(self, token: str) -> str:
        return (await self._lookup(token))[0]

    async def _lookup(self, token: str) -> tuple[str, tuple[str, ...]]:
        key = hashlib.sha256(token.encode()).hexdigest()
        found = self._known.get(key)
        now = time.monotonic()
        if found is not None and found[2] > now:
            return found[0], found[1]
        try:
            user, scopes = await IdentityClient(self.bus).scopes_of(token)
        except PermissionDenied as exc:
            self._known.pop(key, None)
            raise Unauthorized(f"the token was refused: {exc}") from None
        except ConnectionFailed as exc:
            raise ConnectionFailed(f"cannot check the token: {exc}") from None
        if len(self._known) > 1000:
            self._known.clear()
        self._known[key] = (user, tuple(scopes), now + TOKEN_TTL_S)
        return user, tuple(scopes)
