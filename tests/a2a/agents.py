"""Agents the A2A tests serve and call."""

from __future__ import annotations

from typing import Any

from relaybus import Agent, Context


class Echo(Agent):
    name = "echo"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return {"echo": task}


class Approver(Agent):
    name = "approver"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return {"approved": await ctx.wait_signal("approval"), "task": task}
