"""A tiny HTTP/1.1 JSON server on asyncio, for the local dev servers (scripted model, payment
sandbox, webhook receivers). Not a web framework: one route function answers every request."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from .runtime import EXIT_OK, stop_on_signals

Response = tuple[int, Any, dict[str, str]]  # status, JSON body, extra headers
Route = Callable[[str, str, dict[str, str], bytes], Response | Awaitable[Response]]
MAX_BODY = 1_000_000


async def serve_json(route: Route, host: str, port: int) -> asyncio.Server:
    """Start answering with `route(method, path, headers, body)`; the caller owns the server."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                extra: dict[str, str] = {}
                if length > MAX_BODY:
                    status, payload = 413, {"error": {"message": "body too large"}}
                else:
                    raw = await reader.readexactly(length)
                    answer = route(method, path, headers, raw)
                    status, payload, extra = await answer if inspect.isawaitable(answer) else answer
                data = json.dumps(payload).encode()
                head = [
                    f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}",
                    "Content-Type: application/json",
                    f"Content-Length: {len(data)}",
                    *(f"{k}: {v}" for k, v in extra.items()),
                ]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
                if length > MAX_BODY:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(on_connection, host, port)


async def serve_until_stopped(server: asyncio.Server, announce: Callable[[int], str]) -> int:
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
