"""Agents for the graceful-degradation tests (tests/agents/test_degrade.py)."""

from __future__ import annotations

from typing import Any

import pydantic

from relaybus.agents import Agent, Context, tool
from relaybus.bus import RetryPolicy


class Nothing(pydantic.BaseModel):
    pass


@tool("shop/quote", cost=50)
async def quote(args: Nothing) -> str:
    return "quoted"


class Frugal(Agent):
    """Asks the expensive model; over budget, the configured cheaper one answers."""

    name = "frugal"
    cheaper_models = {"big": "medium", "medium": "small"}

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        answer = await ctx.llm([{"role": "user", "content": "hello"}], model="big", max_tokens=20)
        return {"model": answer.model, "content": answer.content}


class Retrying(Agent):
    """Over budget, tries again a little later (someone may have raised the budget)."""

    name = "retrying"
    on_budget_exceeded = "retry"
    budget_retry_s = 0.3
    retry = RetryPolicy(attempts=50, backoff_s=0.1)

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        return str(await ctx.tool(quote))


class Queueing(Agent):
    """Over a periodic budget, waits for the period to end."""

    name = "queueing"
    on_budget_exceeded = "queue"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        return str(await ctx.tool(quote))
