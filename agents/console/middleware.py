"""ASGI guards shared by the HTTP faces of relaybus (the console, `relaybus a2a serve`,
`relaybus mcp serve`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .access import is_loopback, token_in_url, token_in_url_error


class LocalHostOnly:
    """Bound to loopback, answer only requests addressed to a loopback name: a web page
    elsewhere cannot reach a local server (the console, a dev A2A or MCP server acting as
    user:dev) by rebinding its DNS name to 127.0.0.1."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback(urlsplit(f"//{host}").hostname or ""):
                response = JSONResponse(
                    {
                        "error": f"host {host!r} is not this server (it answers only on a loopback name)"
                    },
                    421,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class NoTokensInUrls:
    """Refuse (400) any request whose URL carries an API token — a token-named query parameter
    (`?token=…`) or a token anywhere in the path or query — before anything else looks at it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").decode("latin-1")
            where = token_in_url(scope.get("path", ""), query)
            if where:
                response = JSONResponse(
                    {"error": str(token_in_url_error(where))},
                    status_code=400,
                    headers={"Cache-Control": "no-store"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
