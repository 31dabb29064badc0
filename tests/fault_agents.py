"""A three-hop pipeline for the fault suite (PYTHONPATH=tests): entry → middle → leaf.

Each hop does some work before its effect, so a kill -9 lands mid-run; both costed tools append
one line per execution to a log file, which is how the tests count effects."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pydantic

from relaybus.agents import Agent, Context, tool

CHARGE_COST = 3
EFFECT_COST = 7
RUN_COST = CHARGE_COST + EFFECT_COST


class EffectArgs(pydantic.BaseModel):
    log: str
    run: str


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


@tool("fault/charge", cost=CHARGE_COST)
def charge(args: EffectArgs) -> str:
    _append(args.log, f"charge {args.run}")
    return "charged"


@tool("fault/effect", cost=EFFECT_COST)
def apply_effect(args: EffectArgs) -> str:
    _append(args.log, f"effect {args.run}")
    return "applied"


class FaultTask(msgspec.Struct):
    log: str
    n: int
    work_s: float = 0.05


class Entry(Agent):
    name = "f_entry"

    async def handle(self, ctx: Context, task: FaultTask) -> dict[str, Any]:
        await ctx.tool(charge, log=task.log, run=ctx.run_id)
        leaf = await ctx.call("f_mid", task, scopes=["fault/effect"])
        return {"n": task.n, "leaf": leaf}


class Middle(Agent):
    name = "f_mid"

    async def handle(self, ctx: Context, task: FaultTask) -> Any:
        await asyncio.sleep(task.work_s)
        return await ctx.call("f_leaf", task, scopes=["fault/effect"])


class Leaf(Agent):
    name = "f_leaf"

    async def handle(self, ctx: Context, task: FaultTask) -> dict[str, Any]:
        await asyncio.sleep(task.work_s)
        await ctx.tool(apply_effect, log=task.log, run=ctx.run_id)
        return {"n2": task.n * 2}


POLICY: dict[str, tuple[list[str], list[str]]] = {
    "f_entry": (["fault"], ["f_mid"]),
    "f_mid": (["fault/effect"], ["f_leaf"]),
    "f_leaf": (["fault/effect"], []),
}
SPECS = {
    "f_entry": "fault_agents:Entry",
    "f_mid": "fault_agents:Middle",
    "f_leaf": "fault_agents:Leaf",
}
