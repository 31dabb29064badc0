"""Agents for the observability tests: a fan-out with a costed tool and an LLM call, a poison
message, a tool that fails."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pydantic

from relaybus.agents import Agent, Context, tool
from relaybus.agents.evaluation import Check, LLMJudge


class PriceArgs(pydantic.BaseModel):
    item: str


@tool("shop/price", cost=5)
async def price(args: PriceArgs) -> int:
    await asyncio.sleep(float(os.environ.get("PRICE_SLEEP_S", "0")))
    return len(args.item)


class Pricer(Agent):
    name = "pricer"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return {"item": task["item"], "price": await ctx.tool(price, item=task["item"])}


class Planner(Agent):
    name = "planner"
    evaluators = [
        Check("has_total", lambda task, result: "total" in result, on="run"),
        Check("cheap", lambda task, result: result["total"] < 3),
        LLMJudge("Is the summary grounded in the prices?", on="run"),
    ]

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        rows = await ctx.gather(*(ctx.spawn("pricer", {"item": i}) for i in task["items"]))
        reply = await ctx.llm(
            [{"role": "user", "content": f"Summarise these prices: {rows}"}], max_tokens=64
        )
        return {"total": sum(r["price"] for r in rows), "summary": reply.content}


class Poison(Agent):
    name = "poison"

    async def handle(self, ctx: Context, task: Any) -> Any:
        raise ValueError("poison pill")


class BrokenArgs(pydantic.BaseModel):
    x: int


@tool("shop/broken")
def broken(args: BrokenArgs) -> int:
    raise RuntimeError(f"upstream exploded on {args.x}")


class Brittle(Agent):
    name = "brittle"

    async def handle(self, ctx: Context, task: Any) -> Any:
        return await ctx.tool(broken, x=7)
