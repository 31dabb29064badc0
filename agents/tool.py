"""`@tool`: a function agents call through `ctx.tool`, with validated arguments, a scope and a cost."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic

from .errors import ToolArgumentsInvalid

if TYPE_CHECKING:
    from .context import Context


@dataclass(frozen=True)
class Tool:
    """A declared tool. `scope` is checked by the identity layer; `cost` (micro-units per call)
    is held and captured by the ledger."""

    name: str
    scope: str
    cost: int
    model: type[pydantic.BaseModel]
    fn: Callable[..., Awaitable[Any] | Any]
    wants_ctx: bool
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    description: str = ""
    #: a metered tool: `cost` is per unit (a CPU second, ...), the hold is `cost` x the most
    #: units these arguments allow, and the capture what the tool reports with `ctx.meter`
    max_units: Callable[[Any], float] | None = None

    def validate(self, arguments: dict[str, Any]) -> pydantic.BaseModel:
        try:
            return self.model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{_where(err['loc'])}: {' '.join(err['msg'].split())}" for err in exc.errors()
            )
            raise ToolArgumentsInvalid(f"tool {self.name}: {problems}") from None

    def json_schema(self) -> dict[str, Any]:
        """This tool as an OpenAI-style function the model may call."""
        parameters = self.model.model_json_schema()
        parameters.pop("title", None)
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }

    async def invoke(self, ctx: Context, args: pydantic.BaseModel) -> Any:
        value = self.fn(ctx, args) if self.wants_ctx else self.fn(args)
        if inspect.isawaitable(value):
            value = await value
        return value


def _where(loc: tuple[int | str, ...]) -> str:
    """`address.zip`, `tags.0`; a name that is no identifier (`''`, `'a\\nb'`) quoted, so a
    hostile argument name cannot forge or split the message."""
    parts = (p if isinstance(p, int) or p.isidentifier() else repr(p) for p in loc)
    return ".".join(map(str, parts)) or "(arguments)"


def tool(
    scope: str,
    *,
    cost: int = 0,
    name: str | None = None,
    breaker_failures: int = 5,
    breaker_reset_s: float = 30.0,
    max_units: Callable[[Any], float] | None = None,
) -> Callable[[Callable[..., Any]], Tool]:
    """Declare a tool. The function takes one pydantic model argument (optionally after `ctx`);
    unknown argument fields are refused.

        class Search(BaseModel):
            query: str

        @tool("search/docs", cost=100)
        async def search(args: Search) -> list[str]: ...

    `max_units` makes the tool metered: `cost` is then the price of one unit, the ledger holds
    it times `max_units(args)` before the call and captures what the tool reported with
    `ctx.meter(units)` (never more than the hold).
    """
    if not scope or scope.startswith("/") or scope.endswith("/"):
        raise ValueError(f"tool scope {scope!r} must be a command path like 'email/send'")
    if cost < 0:
        raise ValueError("tool cost must be >= 0 micro-units")

    def wrap(fn: Callable[..., Any]) -> Tool:
        from .context import Context  # the usual annotation of a tool's first parameter

        hints = typing.get_type_hints(fn, localns={"Context": Context})
        params = list(inspect.signature(fn).parameters)
        wants_ctx = len(params) == 2
        model = hints.get(params[-1]) if params else None
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise TypeError(f"@tool {fn.__name__}: its last parameter must be a pydantic model")
        strict = type(
            model.__name__, (model,), {"model_config": {**model.model_config, "extra": "forbid"}}
        )
        return Tool(
            name=name or fn.__name__,
            scope=scope,
            cost=cost,
            model=strict,
            fn=fn,
            wants_ctx=wants_ctx,
            breaker_failures=breaker_failures,
            breaker_reset_s=breaker_reset_s,
            max_units=max_units,
            description=inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0],
        )

    return wrap
