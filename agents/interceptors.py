"""Interceptors: behaviour hung around the runtime's work without the runtime knowing it, as
Temporal's worker interceptors and dramatiq's middleware. Each method wraps `call_next`;
a subclass overrides what it needs.

The worker runs, outermost first, `Tracing` (spans), `Metrics` (durations), the agent's own
(`Agent.interceptors`), then `Evaluation` (scores a completed task). The runtime itself calls
only `run_task`, `run_tool` and `completed`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from relaybus.bus import metrics, tracing

if TYPE_CHECKING:
    from .context import Context
    from .tool import Tool

RunTask = Callable[[], Awaitable[str]]
RunTool = Callable[[], Awaitable[Any]]


class Interceptor:
    async def run_task(self, ctx: Context, headers: dict[str, str], call_next: RunTask) -> str:
        """Around one execution of a handler; returns how it ended (`completed`, `failed`,
        `suspended`, `handoff`, `cancelled`, `parked`). `headers`: the delivered message's."""
        return await call_next()

    async def run_tool(self, ctx: Context, tool: Tool, args: Any, call_next: RunTool) -> Any:
        """Around the invocation of a tool that passed the gate and holds its charge (never
        around a replay: a recorded call is not invoked again)."""
        return await call_next()

    async def completed(self, ctx: Context, result: bytes) -> None:
        """After a task completed (its outcome delivered), with its JSON result."""


async def run_task(
    interceptors: Sequence[Interceptor], ctx: Context, headers: dict[str, str], final: RunTask
) -> str:
    call = final
    for interceptor in reversed(interceptors):
        call = _bind_task(interceptor, ctx, headers, call)
    return await call()


async def run_tool(
    interceptors: Sequence[Interceptor], ctx: Context, tool: Tool, args: Any, final: RunTool
) -> Any:
    call = final
    for interceptor in reversed(interceptors):
        call = _bind_tool(interceptor, ctx, tool, args, call)
    return await call()


def _bind_task(
    interceptor: Interceptor, ctx: Context, headers: dict[str, str], call_next: RunTask
) -> RunTask:
    return lambda: interceptor.run_task(ctx, headers, call_next)


def _bind_tool(
    interceptor: Interceptor, ctx: Context, tool: Tool, args: Any, call_next: RunTool
) -> RunTool:
    return lambda: interceptor.run_tool(ctx, tool, args, call_next)


class Tracing(Interceptor):
    """An `invoke_agent` span per handler execution, continuing the producer's trace from the
    message headers; an `execute_tool` span per tool call (OpenTelemetry GenAI conventions)."""

    async def run_task(self, ctx: Context, headers: dict[str, str], call_next: RunTask) -> str:
        """The task's first execution continues the trace of the message that asked for it
        (a run's first task without one is the run's root span); every later execution
        (resumed, retried) is a child of that first span, linked to the message that woke it,
        so work never nests under whichever child happened to finish last."""
        env = ctx.envelope
        origin = ctx.trace_origin
        root = (
            not origin
            and not env.parent_id
            and not env.hop
            and not trace.get_current_span(tracing.extract(headers)).get_span_context().is_valid
        )
        if not tracing.recording():
            # no span is recorded here: the context is passed on as a span would pass it (the
            # message's, or the run's derived one), without building one
            if root:
                return await call_next()
            parent = (
                tracing.extract({"traceparent": origin})
                if origin
                else tracing.run_context(headers, env.run_id, env.id)
            )
            carried = trace.NonRecordingSpan(trace.get_current_span(parent).get_span_context())
            if not origin:
                ctx.trace_origin = tracing.traceparent_of(carried)
            with trace.use_span(carried):
                return await call_next()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": ctx.agent,
            "messaging.system": "nats",
            "messaging.message.id": env.id,
            "relaybus.run_id": env.run_id,
            "relaybus.task_id": env.id,
            "relaybus.delivery_count": ctx.attempt,
        }
        name, kind = f"invoke_agent {ctx.agent}", SpanKind.CONSUMER
        if origin:
            span = tracing.TRACER.start_span(
                name,
                context=tracing.extract({"traceparent": origin}),
                kind=kind,
                attributes={**attributes, "relaybus.resumed": True},
                links=tracing.links_from([headers.get("traceparent", "")]),
            )
        elif root:
            span = tracing.start_run_root(name, env.run_id, kind=kind, attributes=attributes)
        else:
            span = tracing.TRACER.start_span(
                name,
                context=tracing.run_context(headers, env.run_id, env.id),
                kind=kind,
                attributes=attributes,
            )
        if not origin:
            ctx.trace_origin = tracing.traceparent_of(span)
        with trace.use_span(span, end_on_exit=True):
            return await call_next()

    async def run_tool(self, ctx: Context, tool: Tool, args: Any, call_next: RunTool) -> Any:
        with tracing.TRACER.start_as_current_span(
            f"execute_tool {tool.name}",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool.name,
                "relaybus.run_id": ctx.run_id,
                "relaybus.scope": tool.scope,
                "relaybus.cost": ctx.price(tool),
            },
        ) as span:
            value = await call_next()
            units = ctx.metered_units
            if tool.max_units is not None and units is not None:  # priced per unit used
                span.set_attribute("relaybus.units", units)
                span.set_attribute("relaybus.cost", math.ceil(ctx.price(tool) * units))
            return value


class Metrics(Interceptor):
    """`relaybus.step.duration` per handler execution, `gen_ai.tool.duration` per tool call."""

    async def run_task(self, ctx: Context, headers: dict[str, str], call_next: RunTask) -> str:
        outcome = "error"
        try:
            outcome = await call_next()
            return outcome
        finally:
            metrics.STEP_DURATION.record(
                time.perf_counter() - ctx.started,
                {"agent": ctx.agent, "outcome": outcome},
            )

    async def run_tool(self, ctx: Context, tool: Tool, args: Any, call_next: RunTool) -> Any:
        started, outcome = time.perf_counter(), "error"
        try:
            value = await call_next()
            outcome = "ok"
            return value
        finally:
            metrics.TOOL_DURATION.record(
                time.perf_counter() - started, {"tool": tool.name, "outcome": outcome}
            )
