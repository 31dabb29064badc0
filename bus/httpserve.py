"""Serving the local HTTP apps (the scripted model, the payment sandbox, the webhook receiver):
Starlette apps on uvicorn, in the running event loop, on loopback unless told otherwise.

`json_app` builds an app whose own errors (404, 405, …) answer JSON. `serve_app` binds the
socket (port 0: any free one), starts uvicorn and returns an `HttpServer` once it accepts
connections; request bodies over `max_body` bytes are answered 413 before the app sees them.
`serve_until_stopped` runs a server until SIGTERM or SIGINT, then shuts it down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import RelayError
from .runtime import EXIT_OK, stop_on_signals

LOOPBACK = "127.0.0.1"
MAX_BODY = 1_000_000
DRAIN_MAX = 16_000_000
GRACEFUL_SHUTDOWN_S = 5


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"message": message}}, status, headers=headers)


def json_app(routes: Sequence[BaseRoute], middleware: Sequence[Middleware] = ()) -> Starlette:
    """A Starlette app over `routes` whose HTTP errors (404, 405, …) answer JSON too."""
    return Starlette(
        routes=list(routes),
        middleware=list(middleware),
        exception_handlers={HTTPException: _http_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    messages = {404: f"no route {where}", 405: f"{where}: method not allowed"}
    return json_error(exc.status_code, messages.get(exc.status_code, exc.detail), exc.headers)


class BodyLimit:
    """Answers 413 to a request whose body is over `max_body` bytes, whether its Content-Length
    says so or its chunks add up to it; hands the app the body in one piece otherwise.

    An oversized body still being sent is read on (up to DRAIN_MAX bytes) and dropped before the
    413 goes out: closing on a client mid-send resets the connection, and the client would see
    the reset instead of the answer. A client that waits for `100-continue` is answered at once.
    """

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            waits = headers.get("expect", "").lower() == "100-continue"
            if waits or int(declared) > DRAIN_MAX:
                await self._too_large(scope, receive, send)
                return
        body = bytearray()
        size = 0
        more = True
        while more and size <= DRAIN_MAX:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body:
                body += chunk
            more = message.get("more_body", False)
        if size > self.max_body:
            await self._too_large(scope, receive, send)
            return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = json_error(
            413, f"body too large (limit {self.max_body} bytes)", {"Connection": "close"}
        )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for an app: the whole body first, then what the client sends next (a
    disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class _Uvicorn(uvicorn.Server):
    """uvicorn that leaves signal handling to the embedding program and says when it is up."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()


class HttpServer:
    """A server `serve_app` started. Shaped like `asyncio.Server` where callers use it
    (`sockets`, `close()`, `wait_closed()`); `async with` closes it on the way out."""

    def __init__(self, server: _Uvicorn, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self._server = server
        self._sock = sock
        self._task = task
        self.port: int = sock.getsockname()[1]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def close(self) -> None:
        """Stop accepting; requests in flight finish (up to GRACEFUL_SHUTDOWN_S)."""
        self._server.should_exit = True

    async def wait_closed(self) -> None:
        await asyncio.shield(self._task)

    async def __aenter__(self) -> HttpServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


async def serve_app(
    app: ASGIApp, host: str = LOOPBACK, port: int = 0, *, max_body: int = MAX_BODY
) -> HttpServer:
    """Serve `app` on `host:port` from the running event loop; returns once it accepts."""
    sock = listen_socket(host, port)
    config = uvicorn.Config(
        BodyLimit(app, max_body),
        http="h11",
        ws="none",
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _Uvicorn(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    up = asyncio.create_task(server.up.wait())
    try:
        await asyncio.wait({task, up}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        sock.close()
        raise
    finally:
        up.cancel()
    if task.done():
        sock.close()
        task.result()
        raise RelayError(f"the HTTP server on {host}:{port} stopped as it started")
    return HttpServer(server, sock, task)


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (0: any free port), or a RelayError naming why not."""
    if not 0 <= port <= 65535:
        raise RelayError(f"--port {port} is not a port: use 0-65535 (0: any free port)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise RelayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class Listening(Protocol):
    """A running server: an `HttpServer` or an `asyncio.Server` (the dev SMTP server)."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


async def serve_until_stopped(server: Listening, announce: Callable[[int], str]) -> int:
    """Print `announce(port)` (a line `relaybus demo` and tests read), serve until SIGTERM or
    SIGINT, then close the server. Returns the exit code."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    print(announce(server.sockets[0].getsockname()[1]), flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
    return EXIT_OK
