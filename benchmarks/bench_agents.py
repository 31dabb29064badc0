"""Agents for benchmarks/runtime.py."""

from __future__ import annotations

from typing import Any

from agents import Agent, Context


class Orchestrator(Agent):
    name = "borch"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> int:
        handles = [ctx.spawn("bworker", {"x": x}) for x in range(3)]
        return sum(await ctx.gather(*handles))


class Worker(Agent):
    name = "bworker"

    async def handle(self, ctx: Context, task: dict[str, int]) -> int:
        return task["x"] * 2


class Steps(Agent):
    name = "bsteps"

    async def handle(self, ctx: Context, task: dict[str, int]) -> int:
        for i in range(task["steps"]):
            await ctx.step(f"s{i}", int, i)
        return task["steps"]
