"""Agents that run code through the sandboxed `run_code` tool."""

from __future__ import annotations

from typing import Any

from relaybus.agents import Agent, Context
from relaybus.agents.tools.code import run_code
from relaybus.bus import Retry

SEEN: list[str] = []  # what each execution of FlakyCoder got back from its code (in-process)


class Coder(Agent):
    """Runs the program in the task and returns the tool's report."""

    name = "coder"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return dict(await ctx.tool(run_code, task))


class FlakyCoder(Agent):
    """Runs a program that prints random bytes, then fails its first attempt after the call."""

    name = "flaky_coder"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        report = await ctx.tool(run_code, code="import os\nprint(os.urandom(16).hex())")
        SEEN.append(report["stdout"])
        if ctx.attempt == 1:
            raise Retry("the task fails after its code ran", delay_s=0.1)
        return dict(report)
