"""Seed-scenario agents for fault tests."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from relaybus.agents import Context
from relaybus.agents.demo.agents import DeliverTask, Mailer


class PausingMailer(Mailer):
    """The demo's email agent, pausing after it sent the mail and before it returns
    (MAILER_PAUSE_S seconds), so a test can kill it in that window."""

    async def handle(self, ctx: Context, task: DeliverTask) -> dict[str, Any]:
        outcome = await super().handle(ctx, task)
        await ctx.step("pause", asyncio.sleep, float(os.environ.get("MAILER_PAUSE_S", "0")))
        return outcome
