"""The smallest real agent: returns its task unchanged."""

from __future__ import annotations

from typing import Any

from relaybus.agents import Agent, Context


class Echo(Agent):
    name = "echo"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        ctx.log.info("echoing %d field(s)", len(task))
        return task
