"""`use_tools`: let a model call `@tool`s, each call going through `ctx.tool` and so through the
authorization gate, the ledger and the journal, until it answers in text.

A refused call (the gate said no, arguments that fail the schema, a data tool's refusal) is
not an error of the run: the model is told, inside a data block, and carries on. Everything is
journaled, so a replay walks the same calls without running any of them again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec

from relaybus.agents.errors import DataRefused
from relaybus.bus import PermissionDenied
from relaybus.services.payments.errors import PaymentRefused

from ..errors import LimitExceeded, ToolArgumentsInvalid
from .prompt import data_block

if TYPE_CHECKING:
    from ..context import Context
    from ..tool import Tool

MAX_TOOL_OUTPUT = 4000


class ToolCall(msgspec.Struct, kw_only=True):
    """One function call the model asked for, and what came of it."""

    tool: str
    arguments: dict[str, Any]
    ok: bool
    result: Any = None
    error: str = ""


class ToolRun(msgspec.Struct, kw_only=True):
    """The model's final answer and every call it made on the way."""

    content: str
    calls: list[ToolCall]
    rounds: int

    @property
    def refused(self) -> list[ToolCall]:
        return [c for c in self.calls if not c.ok]


async def use_tools(
    ctx: Context,
    messages: list[dict[str, Any]],
    tools: list[Tool],
    *,
    max_rounds: int = 4,
    model: str | None = None,
    max_tokens: int = 1024,
) -> ToolRun:
    """Chat with `tools` offered; run the calls the model makes; repeat until it answers in
    text (LimitExceeded after `max_rounds` model calls that still asked for tools)."""
    by_name = {t.json_schema()["function"]["name"]: t for t in tools}
    conversation = list(messages)
    calls: list[ToolCall] = []
    for round_ in range(1, max_rounds + 1):
        reply = await ctx.llm(conversation, model=model, max_tokens=max_tokens, tools=tools)
        if not reply.tool_calls:
            return ToolRun(content=reply.content, calls=calls, rounds=round_)
        conversation.append(
            {"role": "assistant", "content": reply.content or None, "tool_calls": reply.tool_calls}
        )
        for raw in reply.tool_calls:
            call = await _run_call(ctx, by_name, raw)
            calls.append(call)
            conversation.append(
                {
                    "role": "tool",
                    "tool_call_id": str(raw.get("id") or ""),
                    "content": data_block(f"tool {call.tool}", _report(call)),
                }
            )
    raise LimitExceeded(f"the model still asked for tools after {max_rounds} rounds")


async def _run_call(ctx: Context, by_name: dict[str, Tool], raw: dict[str, Any]) -> ToolCall:
    if not isinstance(raw, dict):
        return ToolCall(tool="", arguments={}, ok=False, error="a tool call must be an object")
    function = raw.get("function")
    if not isinstance(function, dict):
        function = {}
    name = str(function.get("name") or "")
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError, RecursionError):
        return ToolCall(tool=name, arguments={}, ok=False, error="arguments are not JSON")
    if not isinstance(arguments, dict):
        return ToolCall(tool=name, arguments={}, ok=False, error="arguments must be an object")
    tool = by_name.get(name)
    if tool is None:
        known = ", ".join(sorted(by_name)) or "none"
        return ToolCall(
            tool=name, arguments=arguments, ok=False, error=f"no tool {name!r} (tools: {known})"
        )
    try:
        result = await ctx.tool(tool, arguments)
    except (PermissionDenied, ToolArgumentsInvalid, DataRefused, PaymentRefused) as exc:
        ctx.log.warning("tool call refused: %s", exc)
        return ToolCall(tool=name, arguments=arguments, ok=False, error=str(exc))
    return ToolCall(tool=name, arguments=arguments, ok=True, result=result)


def _report(call: ToolCall) -> str:
    if not call.ok:
        return f"refused: {call.error}"
    text = json.dumps(call.result, default=str)
    return text if len(text) <= MAX_TOOL_OUTPUT else text[:MAX_TOOL_OUTPUT] + " …(truncated)"
