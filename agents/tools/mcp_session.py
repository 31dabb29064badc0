"""One MCP client session per declared server, opened on first use, reopened after it drops.

The mcp SDK's transports are anyio task groups: the task that opens one must close it. So each
session lives in a task of its own (`_own`) that opens it, hands it over, and waits until it is
told to close; calls from any handler task go through the handed-over `mcp.Client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from typing import Any

import httpx2
import mcp
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from relaybus.agents.errors import McpUnavailable

from .config import McpServer

log = logging.getLogger("relaybus.tools.mcp")


class McpConnection:
    """`await conn.client()` → a live `mcp.Client` for server `name`; `await conn.drop()` after
    the session broke; `await conn.aclose()` at shutdown."""

    def __init__(self, name: str, server: McpServer) -> None:
        self.name, self.server = name, server
        self.opened = 0  # sessions opened so far (a reconnect opens one more)
        self._client: mcp.Client | None = None
        self._owner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    async def client(self) -> mcp.Client:
        async with self._lock:
            if self._client is not None and self._owner is not None and not self._owner.done():
                return self._client
            await self._close_owner()
            ready: asyncio.Future[mcp.Client] = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._owner = asyncio.create_task(self._own(ready), name=f"mcp-{self.name}")
            try:
                async with asyncio.timeout(self.server.timeout_s):
                    self._client = await asyncio.shield(ready)
            except TimeoutError:
                await self._close_owner(wait_s=0.0)
                raise McpUnavailable(
                    f"MCP server {self.name} did not complete its handshake within "
                    f"{self.server.timeout_s:g}s; check [mcp.{self.name}] in the sources file",
                    server=self.name,
                ) from None
            self.opened += 1
            return self._client

    async def _own(self, ready: asyncio.Future[mcp.Client]) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                transport = self._transport(stack)
                client = mcp.Client(transport, read_timeout_seconds=self.server.timeout_s)
                ready.set_result(await stack.enter_async_context(client))
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(
                    McpUnavailable(
                        f"cannot open MCP server {self.name}: {type(exc).__name__}: {exc}"[:500],
                        server=self.name,
                    )
                )
            elif not self._stop.is_set():
                log.warning("MCP server %s: the session ended: %r", self.name, exc)
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
        finally:
            self._client = None

    def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        server = self.server
        if server.url:
            http = httpx2.AsyncClient(
                headers=server.headers,
                timeout=httpx2.Timeout(server.timeout_s, read=max(server.timeout_s, 300.0)),
            )
            stack.push_async_callback(http.aclose)
            return streamable_http_client(
                server.url, http_client=http, max_sse_event_size=4 * server.max_result_bytes
            )
        command, *args = server.command
        executable = shutil.which(command) or command
        return stdio_client(StdioServerParameters(command=executable, args=args, env=server.env))

    async def drop(self) -> None:
        """Close a session that failed under a call; the next call opens a new one."""
        async with self._lock:
            await self._close_owner()

    async def _close_owner(self, wait_s: float = 10.0) -> None:
        """Tell the owner task to close its session; cancel it if it has not within `wait_s`."""
        owner, self._owner, self._client = self._owner, None, None
        if owner is None:
            return
        self._stop.set()
        try:
            async with asyncio.timeout(wait_s):
                await asyncio.gather(owner, return_exceptions=True)
        except TimeoutError:
            owner.cancel()
            await asyncio.gather(owner, return_exceptions=True)

    async def aclose(self) -> None:
        async with self._lock:
            await self._close_owner()
