"""Agents the MCP server tests offer as tools (PYTHONPATH=tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic

from relaybus.agents import Agent, Context


class Greeting(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    name: str
    times: int = 1


class Greeter(Agent):
    """Greets someone by name, as often as asked."""

    name = "mcp_greet"

    async def handle(self, ctx: Context, task: Greeting) -> dict[str, Any]:
        return {"greeting": " ".join([f"hello {task.name}"] * task.times)}


def tick(n: int) -> int:
    return n


class Slow(Agent):
    """Takes a few steps, then waits for a `go` signal that the tests never send."""

    name = "mcp_slow"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        for n in range(int(task.get("steps", 3))):
            await ctx.step(f"tick-{n}", tick, n)
            await asyncio.sleep(0.05)
        await ctx.wait_signal("go")
        return "done"
