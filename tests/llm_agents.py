"""An agent that lets the model use a tool (agents.llm.use_tools)."""

from __future__ import annotations

from typing import Any

import msgspec
import pydantic

from relaybus.agents import Agent, Context, tool
from relaybus.agents.llm import prompt, use_tools


class Note(pydantic.BaseModel):
    text: str


@tool("notes/write", name="note")
def note(args: Note) -> dict[str, str]:
    """Write a note."""
    return {"noted": args.text}


class NoteTaker(Agent):
    name = "notetaker"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        run = await use_tools(
            ctx, prompt("You take notes.", task["ask"], [("doc", task.get("doc", ""))]), [note]
        )
        return msgspec.to_builtins(run)
