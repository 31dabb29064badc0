"""Agents for benchmarks/runtime.py."""

from __future__ import annotations

from typing import Any

from relaybus.agents import Agent, Context


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


# -- benchmarks/load.py: three hops with identity, a costed tool and tracing ------------------

import pydantic  # noqa: E402

from relaybus.agents import tool  # noqa: E402

LOAD_TOOL_COST = 2


class Stamp(pydantic.BaseModel):
    n: int


@tool("load/stamp", cost=LOAD_TOOL_COST)
def stamp(args: Stamp) -> int:
    return args.n + 1


class LoadEntry(Agent):
    name = "lentry"

    async def handle(self, ctx: Context, task: dict[str, int]) -> None:
        await ctx.handoff("lmid", task, scopes=["load"])


class LoadMid(Agent):
    name = "lmid"

    async def handle(self, ctx: Context, task: dict[str, int]) -> None:
        await ctx.handoff("lleaf", task, scopes=["load"])


class LoadLeaf(Agent):
    name = "lleaf"

    async def handle(self, ctx: Context, task: dict[str, int]) -> int:
        return int(await ctx.tool(stamp, n=task["n"]))


# -- benchmarks/roundtrip.py: one hop, its task echoed back -----------------------------------


class Echo(Agent):
    name = "becho"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return task


class FanEcho(Agent):
    """Fans its task out to `children` Echo children at once and returns how many echoed it."""

    name = "bfan"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> int:
        handles = [ctx.spawn("becho", task) for _ in range(int(task["children"]))]
        return sum(echoed == task for echoed in await ctx.gather(*handles))


class CostedEcho(Agent):
    """Every layer's work on one hop: a verified chain, a costed tool (authorized, audited,
    held and captured, journaled), spans."""

    name = "bcecho"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        await ctx.tool(stamp, n=int(task["n"]))
        return task
