"""What tool an agent becomes: its schema from its declared input, its text from its docstring."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from relaybus.agents import Agent, Context
from relaybus.agents.mcp_server import ArgumentsInvalid, expose, expose_name


class Order(msgspec.Struct, forbid_unknown_fields=True):
    sku: str
    qty: int = 1


class Orders(Agent):
    """Places an order."""

    name = "orders"

    async def handle(self, ctx: Context, task: Order) -> None: ...


class Shout(Agent):
    name = "shout"

    async def handle(self, ctx: Context, task: str) -> str:
        return task.upper()


class Anything(Agent):
    name = "anything"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> None: ...


def test_a_struct_input_is_the_tool_schema_and_checks_arguments() -> None:
    tool = expose(Orders)
    assert tool.description == "Places an order."
    assert tool.input_schema["type"] == "object"
    assert tool.input_schema["required"] == ["sku"]
    assert tool.payload({"sku": "A-1", "qty": 2}) == b'{"sku":"A-1","qty":2}'
    with pytest.raises(ArgumentsInvalid, match=r"arguments for 'orders' do not match.*qty"):
        tool.payload({"sku": "A-1", "qty": "two"})


def test_an_input_that_is_not_an_object_is_taken_under_input() -> None:
    tool = expose(Shout)
    assert tool.input_schema == {
        "type": "object",
        "properties": {"input": {"type": "string"}},
        "required": ["input"],
    }
    assert tool.description == "Run the relaybus agent 'shout'."
    assert tool.payload({"input": "hi"}) == b'"hi"'
    with pytest.raises(ArgumentsInvalid, match="exactly one argument, 'input'"):
        tool.payload({"text": "hi"})


def test_an_agent_without_a_declared_input_takes_any_object() -> None:
    for tool in (expose(Anything), expose_name("anything", "Does anything.")):
        assert tool.input_schema == {"type": "object"}
        assert tool.payload({"x": [1]}) == b'{"x":[1]}'
    assert expose_name("anything", "Does anything.").description == "Does anything."
