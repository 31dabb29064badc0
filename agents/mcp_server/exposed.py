"""Which agents become MCP tools, what each tool's input schema is, and checking a call's
arguments against the agent's declared input before any run starts."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pydantic

from relaybus.bus import Reject, RelayError
from relaybus.bus.subjects import check_name

from ..base import Agent, input_decoder

OPEN_OBJECT: dict[str, Any] = {"type": "object"}
WRAPPED = "input"  # a tool of an agent whose input is not a JSON object takes it under this key


class ArgumentsInvalid(RelayError):
    """A tool call whose arguments do not match the agent's declared input."""

    def __init__(self, agent: str, problem: str) -> None:
        super().__init__(
            f"arguments for {agent!r} do not match its input: {problem}; "
            "call tools/list for the tool's inputSchema and send arguments that follow it"
        )
        self.agent = agent
        self.problem = problem


@dataclass(frozen=True)
class ExposedAgent:
    """One agent offered as an MCP tool. `input_type` None: the agent's class was not given,
    so any JSON object is passed through and the agent checks it."""

    name: str
    description: str
    input_schema: dict[str, Any] = field(default_factory=lambda: dict(OPEN_OBJECT))
    input_type: Any = None
    wrapped: bool = False
    _decode: Callable[[bytes], Any] | None = field(default=None, compare=False, repr=False)

    def payload(self, arguments: dict[str, Any] | None) -> bytes:
        """The run's task (JSON bytes) for these tool arguments; ArgumentsInvalid if the agent
        would refuse them."""
        args = arguments or {}
        if self.wrapped:
            if set(args) != {WRAPPED}:
                raise ArgumentsInvalid(self.name, f"give exactly one argument, {WRAPPED!r}")
            value: Any = args[WRAPPED]
        else:
            value = args
        body = msgspec.json.encode(value)
        if self._decode is not None:
            try:
                self._decode(body)
            except Reject as exc:
                raise ArgumentsInvalid(self.name, str(exc)) from None
        return body


def schema_of(tp: Any) -> dict[str, Any] | None:
    """The JSON schema of an input type, or None if it declares nothing (Any, plain dict)."""
    if tp is Any or tp is None or tp is dict or typing.get_origin(tp) is dict:
        return None
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return tp.model_json_schema()
    try:
        schema = msgspec.json.schema(tp)
    except (TypeError, ValueError):
        return None
    defs = schema.pop("$defs", {})
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**defs[ref.removeprefix("#/$defs/")], **rest}
    if defs:
        schema["$defs"] = defs
    return schema


def expose(cls: type[Agent], description: str | None = None) -> ExposedAgent:
    """The tool for an agent class: its docstring (or `description`), its input's schema."""
    own = inspect.cleandoc(cls.__doc__) if cls.__doc__ else ""
    text = description or own or f"Run the relaybus agent {cls.name!r}."
    tp = cls.input_type()
    schema = schema_of(tp)
    if schema is None:
        return ExposedAgent(name=cls.name, description=text)
    wrapped = schema.get("type") != "object"
    if wrapped:
        schema = {"type": "object", "properties": {WRAPPED: schema}, "required": [WRAPPED]}
    return ExposedAgent(
        name=cls.name,
        description=text,
        input_schema=schema,
        input_type=tp,
        wrapped=wrapped,
        _decode=input_decoder(tp),
    )


def expose_name(name: str, description: str | None = None) -> ExposedAgent:
    """The tool for an agent known only by name: any JSON object, checked by the agent."""
    check_name("agent", name)
    return ExposedAgent(name=name, description=description or f"Run the relaybus agent {name!r}.")


def exposed_agents(
    specs: list[str], descriptions: list[str], load: Callable[[str], type[Agent]]
) -> list[ExposedAgent]:
    """`--agent NAME` or `--agent MODULE:CLASS` (its input schema and docstring are offered),
    and `--description NAME=TEXT`."""
    if not specs:
        raise RelayError("choose the agents to expose: --agent NAME or --agent MODULE:CLASS")
    texts: dict[str, str] = {}
    for item in descriptions:
        name, sep, text = item.partition("=")
        if not sep or not text.strip():
            raise RelayError(f"--description {item!r} is not NAME=TEXT")
        texts[name.strip()] = text.strip()
    found: dict[str, ExposedAgent] = {}
    for spec in specs:
        if ":" in spec:
            cls = load(spec)
            tool = expose(cls, texts.get(cls.name))
        else:
            tool = expose_name(spec, texts.get(spec))
        if tool.name in found:
            raise RelayError(f"agent {tool.name!r} is given twice")
        found[tool.name] = tool
    unknown = set(texts) - set(found)
    if unknown:
        raise RelayError(f"--description for agents not exposed: {', '.join(sorted(unknown))}")
    return list(found.values())
