"""Agents for the identity tests (PYTHONPATH=tests)."""

from __future__ import annotations

from typing import Any

import pydantic

from relaybus.agents import Agent, Context, tool


class Search(pydantic.BaseModel):
    q: str


@tool("search/docs")
def search_docs(args: Search) -> list[str]:
    return [f"doc about {args.q}"]


class Email(pydantic.BaseModel):
    to: str
    cc: list[str] = []
    bcc: list[str] = []
    subject: str


@tool("email/send")
def send_email(args: Email) -> dict[str, Any]:
    return {"sent_to": args.to, "subject": args.subject}


class Read(pydantic.BaseModel):
    tenant: str


@tool("data/read")
def read_data(args: Read) -> str:
    return f"rows of {args.tenant}"


class Orchestrator(Agent):
    name = "i_orch"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> None:
        notes = await ctx.call(
            "i_research", {"q": task["q"]}, scopes=task.get("research_scopes", ["search/docs"])
        )
        target = task.get("writer", "i_writer")
        await ctx.handoff(
            target,
            {"notes": notes, **task["mail"]},
            scopes=["email/send:recipient_domain=team.example"],
        )


class Research(Agent):
    name = "i_research"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> list[str]:
        return list(await ctx.tool(search_docs, q=task["q"]))


class Writer(Agent):
    name = "i_writer"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        args = {k: v for k, v in task.items() if k in ("to", "cc", "bcc")}
        return dict(await ctx.tool(send_email, subject=f"{len(task['notes'])} notes", **args))


class DataReader(Agent):
    """Reads whichever tenant the task names: the chain's principal must stop it."""

    name = "i_data"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        return str(await ctx.tool(read_data, tenant=task["tenant"]))


class Waiter(Agent):
    name = "i_wait"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        await ctx.wait_signal("go")
        return str(await ctx.tool(read_data, tenant=ctx.principal))


class Rogue(Agent):
    """Hostile code: publishes straight to another agent's subject, skipping the runtime."""

    name = "i_rogue"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        from relaybus.bus import new_envelope

        env = new_envelope(
            kind="task", sender=self.name, recipient="i_writer", payload=b"{}", run_id=ctx.run_id
        )
        await ctx._worker.bus.publish(env)
        return "sent"
