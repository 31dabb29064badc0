"""Agents the A2A tests serve (tests/a2a): an echo, one that waits for a signal, and one that
calls a remote A2A agent as a tool (`[a2a.NAME]` in RELAYBUS_DATA_SOURCES)."""

from __future__ import annotations

from functools import cache
from typing import Any

from relaybus import Agent, Context
from relaybus.agents.tools import DataTools
from relaybus.bus import Settings


class Echo(Agent):
    name = "echo"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return {"echo": task}


class Approver(Agent):
    name = "approver"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return {"approved": await ctx.wait_signal("approval"), "task": task}


@cache
def data_tools(settings: Settings) -> DataTools:
    return DataTools.from_settings(settings)


class Delegator(Agent):
    """Asks the remote agent `task["remote"]`, then (with `task["wait"]`) waits for signal `go`:
    the resume replays the handler, and the remote call comes back from the journal."""

    name = "delegator"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        remote = data_tools(ctx.settings)[f"a2a.{task['remote']}"]
        answer = await ctx.tool(remote, data=task["ask"])
        if task.get("wait"):
            await ctx.wait_signal("go")
        return {"answer": answer}
