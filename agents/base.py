"""`Agent`: what users subclass. A name, a typed input, and `async def handle(ctx, task)`."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import msgspec
import pydantic

from relaybus.bus import Reject, RetryPolicy
from relaybus.bus.subjects import check_name

if typing.TYPE_CHECKING:
    from .context import Context


class Agent:
    """Subclass, set `name`, and implement `handle`. The task type comes from `handle`'s
    annotation (a msgspec Struct, a pydantic model, a dict, ...) or from `Input`."""

    name: ClassVar[str] = ""
    Input: ClassVar[Any] = None
    #: On BudgetExceeded (agents/degrade.py): "fail" the task; "park" it until someone raises
    #: the budget and sends the signal the `parked` event names (`relaybus approve RUN
    #: --signal budget-1`); "retry" it after `budget_retry_s`; "queue" it until the exceeded
    #: budget's period resets.
    on_budget_exceeded: ClassVar[str] = "fail"
    budget_retry_s: ClassVar[float] = 60.0
    #: An LLM call over budget is made again with the cheaper model named here, e.g.
    #: {"gpt-4o": "gpt-4o-mini"} (followed in turn: a → b → c), before the policy above applies.
    cheaper_models: ClassVar[dict[str, str]] = {}
    #: Scores for completed tasks or runs (see agents.evaluation).
    evaluators: ClassVar[list[Any]] = []
    #: When evaluated runs go to human review (agents.review.ReviewPolicy); None: on demand only.
    review: ClassVar[Any] = None
    #: Behaviour around each handler execution and tool call (agents/interceptors.py), run
    #: inside the runtime's tracing and metrics.
    interceptors: ClassVar[list[Any]] = []
    #: What a first `relaybus agent run` on the local stack registers this agent with: the
    #: scopes it may ever hold and the agents it may hand off to (docs/security.md).
    scopes: ClassVar[tuple[str, ...]] = ()
    handoff_to: ClassVar[tuple[str, ...]] = ()
    #: How often a failing task is tried and the waits between tries
    #: (`RetryPolicy(attempts=3, backoff_s=2.0)`); None: RELAYBUS_MAX_DELIVER attempts, 0.5 s
    #: doubling to 30 s. `relaybus agent run --max-attempts N --backoff S` overrides it.
    retry: ClassVar[RetryPolicy | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            check_name("agent", cls.name)
        if cls.on_budget_exceeded not in ("fail", "park", "retry", "queue"):
            raise ValueError(
                f"{cls.__name__}.on_budget_exceeded must be 'fail', 'park', 'retry' or 'queue', "
                f"not {cls.on_budget_exceeded!r}"
            )

    async def handle(self, ctx: Context, task: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.handle is not implemented")

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Open what the agent needs for its whole life (clients, models); default: nothing."""
        yield

    @classmethod
    def input_type(cls) -> Any:
        if cls.Input is not None:
            return cls.Input
        hints = typing.get_type_hints(cls.handle)
        params = list(inspect.signature(cls.handle).parameters)
        if len(params) >= 3 and params[2] in hints:
            return hints[params[2]]
        return Any


def handler_problem(cls: type[Agent]) -> str:
    """Why agent class `cls` cannot handle tasks ("" if it can): checked when it starts, not
    at its first task (which would fail every attempt, then be dead-lettered)."""
    if cls.handle is Agent.handle:
        names = [  # what the subclasses define, not what Agent does
            n
            for klass in cls.__mro__
            if klass not in (Agent, object)
            for n, v in vars(klass).items()
            if not n.startswith("_") and callable(v)
        ]
        close = difflib.get_close_matches("handle", names, n=1)
        meant = f" (is `{close[0]}` meant to be `handle`?)" if close else ""
        return f"{cls.__name__} does not define `async def handle(self, ctx, task)`{meant}"
    if not inspect.iscoroutinefunction(cls.handle):
        return f"{cls.__name__}.handle must be `async def handle(self, ctx, task)`, not a plain def"
    return ""


def input_decoder(tp: Any) -> Callable[[bytes], Any]:
    """A function turning JSON payload bytes into `tp`; bad input raises Reject naming the field."""
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        model = tp

        def decode_model(data: bytes) -> Any:
            try:
                return model.model_validate_json(data)
            except pydantic.ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "(root)"
                raise Reject(f"invalid input for {model.__name__}: {where}: {err['msg']}") from None

        return decode_model
    decoder = msgspec.json.Decoder(tp)

    def decode(data: bytes) -> Any:
        try:
            return decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise Reject(f"invalid input: {exc}") from None
        except msgspec.DecodeError as exc:
            raise Reject(f"input is not JSON: {exc}") from None
        except RecursionError:  # msgspec recurses even into values it skips
            raise Reject("input is nested too deeply") from None

    return decode


def encode_result(value: Any) -> bytes:
    """JSON bytes for a handler's return value (Structs, pydantic models, plain data)."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json().encode()
    return msgspec.json.encode(value)
