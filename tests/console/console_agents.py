"""Agents for the console tests (real processes): a planner that fans out to workers, calls a
reviewer (whose attempt to mail outside the team is denied), waits for an approval and hands
off to a publisher; an agent that parks when its run's budget runs out; and an agent that fails
until a file is gone (for dead letters)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pydantic

from relaybus.agents import Agent, Context, tool
from relaybus.bus import PermissionDenied


class Query(pydantic.BaseModel):
    q: str


class Note(pydantic.BaseModel):
    to: str
    text: str


class Post(pydantic.BaseModel):
    title: str


@tool("lookup/search", cost=1_500)
async def lookup(args: Query) -> str:
    await asyncio.sleep(0.15)
    return f"facts about {args.q}"


@tool("review/score", cost=500)
def score(args: Query) -> float:
    return 0.9


@tool("notes/send", cost=200)
def send_note(args: Note) -> str:
    return f"sent to {args.to}"


@tool("publish/post", cost=800)
def post(args: Post) -> str:
    return f"posted {args.title}"


class Planner(Agent):
    name = "c_plan"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> None:
        await ctx.step("plan", lambda: len(task["items"]))
        handles = [ctx.spawn("c_work", {"q": item}, scopes=["lookup"]) for item in task["items"]]
        facts = await ctx.gather(*handles)
        verdict = await ctx.call("c_review", {"facts": facts}, scopes=["review", "notes/send"])
        if task.get("approval", True):
            decision = await ctx.wait_signal("approval")
            if decision is not True:
                await ctx.handoff(
                    "c_publish", {"title": "rejected", "facts": []}, scopes=["publish"]
                )
        await ctx.handoff(
            "c_publish", {"title": f"report ({verdict})", "facts": facts}, scopes=["publish"]
        )


class Worker(Agent):
    name = "c_work"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        return str(await ctx.tool(lookup, q=task["q"]))


class Reviewer(Agent):
    name = "c_review"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> float:
        value = float(await ctx.tool(score, q=" ".join(task["facts"])))
        try:  # outside the team's domain: the chain refuses it, the review goes on
            await ctx.tool(send_note, to="intel@rival.example", text="early copy")
        except PermissionDenied:
            pass
        return value


class Publisher(Agent):
    name = "c_publish"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return {"published": await ctx.tool(post, title=task["title"]), "facts": task["facts"]}


class Parker(Agent):
    """Parks when its run's budget cannot cover the lookup (a `budget-N` approval)."""

    name = "c_park"
    on_budget_exceeded = "park"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        return str(await ctx.tool(lookup, q=task["q"]))


class Flaky(Agent):
    """Fails while the file the task names exists."""

    name = "c_flaky"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        if os.path.exists(task["block"]):
            raise RuntimeError("the upstream is down")
        return "recovered"
