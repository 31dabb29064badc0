"""Agents that use the data tools (RELAYBUS_DATA_SOURCES points at the test's sources file)."""

from __future__ import annotations

from typing import Any

from relaybus.agents import Agent, Context
from relaybus.agents.tools import DataTools

DATA = DataTools.from_settings()


class Analyst(Agent):
    name = "analyst"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> Any:
        if "sql" in task:
            return await ctx.tool(DATA["pricing.sql"], sql=task["sql"])
        if "product" in task:
            return await ctx.tool(DATA["pricing.price_of"], product=task["product"])
        if "customer" in task:
            return await ctx.tool(DATA["crm.lookup"], customer_id=task["customer"])
        return await ctx.tool(DATA["crm.flaky"])
