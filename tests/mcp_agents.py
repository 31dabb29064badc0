"""An agent that uses MCP tools (RELAYBUS_DATA_SOURCES points at the test's sources file)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from relaybus.agents import Agent, Context
from relaybus.agents.llm import prompt, use_tools
from relaybus.agents.tools import DataTools
from relaybus.bus import Retry

DATA = DataTools.from_settings()


class McpUser(Agent):
    """{"tool": "demo.add", "args": {...}} calls one MCP tool; {"ask": TEXT, "offer": [...]}
    lets the model use the offered MCP tools."""

    name = "mcp_user"

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with DATA.mcp:  # every MCP session this process opened is closed at shutdown
            yield

    async def handle(self, ctx: Context, task: dict[str, Any]) -> Any:
        if "ask" in task:
            tools = [await DATA.mcp.tool(name) for name in task["offer"]]
            run = await use_tools(ctx, prompt("You answer questions.", task["ask"]), tools)
            return msgspec.to_builtins(run)
        result = await ctx.tool(await DATA.mcp.tool(task["tool"]), task.get("args", {}))
        if task.get("retry_once") and ctx.attempt == 1:
            raise Retry("once more: the call must replay from the journal", delay_s=0.1)
        return result
