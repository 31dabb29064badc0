"""Agents that spend money through the payment tools."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from relaybus.agents import Agent, Context
from relaybus.agents.errors import ChildFailed
from relaybus.agents.llm import prompt, use_tools
from relaybus.agents.tools.payments import authorize_payment, refund_payment, settle
from relaybus.services.payments.errors import PaymentRefused


class Buyer(Agent):
    """Pays each charge in turn (authorize → approval if needed → capture), then refunds."""

    name = "buyer"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        receipts = []
        for charge in task["charges"]:
            auth = await ctx.tool(authorize_payment, charge)
            pause = float(os.environ.get("BUYER_PAUSE_S", "0"))
            await ctx.step("between authorize and capture", asyncio.sleep, pause)
            receipts.append({**auth, **await settle(ctx, auth)})
        refunds = []
        for amount in task.get("refunds", []):
            last = receipts[-1]
            ref = {k: last[k] for k in ("payment", "intent", "currency", "payee")}
            ref["amount"] = amount
            try:
                refunds.append(await ctx.tool(refund_payment, ref))
            except PaymentRefused as exc:
                refunds.append({"refused": str(exc)})
        return {"receipts": receipts, "refunds": refunds}


class Concierge(Agent):
    """Lets the model book with authorize_payment after reading an (untrusted) offer."""

    name = "concierge"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        run = await use_tools(
            ctx,
            prompt("You book travel for the user.", task["ask"], [("offer", task["offer"])]),
            [authorize_payment],
        )
        return {"calls": [c.tool for c in run.calls], "refused": [c.error for c in run.refused]}


class BuyerA(Buyer):
    name = "buyer_a"


class BuyerB(Buyer):
    name = "buyer_b"


class Treasurer(Agent):
    """Delegates payments to branches one after the other, each with its own per-run cap:
    `{"steps": [{"agent": "buyer_a", "cap": 6000, "charges": [...]}, ...]}`."""

    name = "treasurer"
    charge = "payments/charge:max_amount=50000,currency=USD,payee=acme-air|globex-hotels"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> list[Any]:
        results: list[Any] = []
        for step in task["steps"]:
            scopes = [f"{self.charge},per_run_amount={step['cap']}"]
            try:
                done = await ctx.call(step["agent"], {"charges": step["charges"]}, scopes=scopes)
                results.append(done)
            except ChildFailed as exc:
                results.append({"failed": str(exc)})
        return results
