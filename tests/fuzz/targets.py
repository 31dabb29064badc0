"""What the fuzz tests aim at: a tool with a typed, constrained argument model whose body leaves
a mark when it runs, and an agent that calls it with whatever arguments its task carries.

Run as `relaybus agent run fuzz.targets:ToolCaller` with FUZZ_TOOL_LOG naming the mark file."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from relaybus.agents import Agent, Context, tool


class Address(BaseModel):
    city: str = Field(min_length=1, max_length=40)
    zip: int = Field(ge=0, le=99_999)


class Order(BaseModel):
    to: str = Field(description="one e-mail address")
    amount: int = Field(gt=0, le=1_000_000)
    ratio: float = Field(default=0.5, ge=0, le=1, allow_inf_nan=False)
    mode: Literal["fast", "slow"] = "fast"
    tags: list[str] = Field(default=[], max_length=5)
    address: Address | None = None

    @field_validator("to")
    @classmethod
    def _one_address(cls, value: str) -> str:
        local, at, domain = value.partition("@")
        if not (local and at and domain) or "@" in domain or any(c.isspace() for c in value):
            raise ValueError("must be one e-mail address")
        return value


CALLS: list[Order] = []


@tool("shop/order", name="spy")
def spy(args: Order) -> dict[str, Any]:
    """Record that the body ran (in this process, and in FUZZ_TOOL_LOG if set)."""
    CALLS.append(args)
    log = os.environ.get("FUZZ_TOOL_LOG")
    if log:
        with open(log, "a") as out:
            out.write(args.model_dump_json() + "\n")
    return {"ok": True}


VALID: dict[str, Any] = {"to": "ana@team.example", "amount": 10}
FIELDS = tuple(Order.model_fields)


class ToolCaller(Agent):
    name = "fuzz-tool-caller"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> Any:
        return await ctx.tool(spy, task.get("args"))
