"""`ctx.llm`: one chat completion, journaled (a replay returns the recorded answer and never
calls twice), charged to the run's budgets from the reported usage, behind the model's circuit
breaker, falling back to the cheaper model the agent names when a budget would be exceeded."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from relaybus.agents.errors import CircuitOpen
from relaybus.bus import ErrorInfo, Retry
from relaybus.services.ledger.errors import BudgetExceeded

from .result import ChatResult

if TYPE_CHECKING:
    from ..context import Context
    from ..execution import Execution
    from ..port import RuntimePort
    from ..tool import Tool


async def journaled_chat(
    ctx: Context,
    worker: RuntimePort,
    execution: Execution,
    messages: list[dict[str, Any]],
    *,
    model: str | None,
    max_tokens: int,
    temperature: float | None,
    tools: list[Tool] | None,
) -> ChatResult:
    client = worker.llm_client()
    model = model or client.model
    seq, op = execution.next("llm", model)
    if op is not None:
        if op.settle:
            await execution.settle(seq, op.settle)
        return msgspec.json.decode(op.result, type=ChatResult)
    await execution.flush()
    estimate = sum(len(str(m.get("content") or "")) for m in messages) // 3 + 16
    breaker = worker.costs.breaker_for(f"llm:{model}")
    try:
        breaker.before()
    except CircuitOpen as exc:
        raise Retry(str(exc), delay_s=breaker.retry_after_s()) from None
    started = time.perf_counter()
    chosen, tried = model, set[str]()
    try:
        while True:
            try:
                async with worker.costs.charge_llm(ctx, chosen, estimate, max_tokens, seq) as bill:
                    execution.ensure_held(f"LLM call {chosen!r}")
                    try:
                        result = await client.chat(
                            messages,
                            model=chosen,
                            max_tokens=max_tokens,
                            temperature=temperature,
                            tools=[t.json_schema() for t in tools] if tools else None,
                            run_id=ctx.run_id,
                            cost_of=_llm_cost(worker, chosen, estimate, max_tokens),
                        )
                    except Exception:
                        breaker.failure()
                        raise
                    breaker.success()
                    bill.input_tokens = result.input_tokens
                    bill.output_tokens = result.output_tokens
                break
            except BudgetExceeded as exc:
                tried.add(chosen)
                chosen = await _cheaper(worker, ctx, chosen, tried, exc)
    except Exception as exc:
        await worker.emit_event(
            ctx.envelope,
            "llm",
            detail=model,
            latency_ms=(time.perf_counter() - started) * 1000,
            error=ErrorInfo.from_exception(exc),
        )
        raise
    execution.record(seq, "llm", model, msgspec.json.encode(result), settle=bill.pending)
    await execution.flush_and_settle(seq, bill.pending)
    await worker.emit_event(
        ctx.envelope,
        "llm",
        detail=chosen,
        latency_ms=(time.perf_counter() - started) * 1000,
        cost=bill.cost,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
    )
    return result


def _llm_cost(worker: RuntimePort, model: str, estimate: int, max_tokens: int) -> Any:
    costs = worker.costs
    return lambda r: costs.llm_cost(model, estimate, max_tokens, r.input_tokens, r.output_tokens)


async def _cheaper(
    worker: RuntimePort, ctx: Context, model: str, tried: set[str], exc: BudgetExceeded
) -> str:
    """The cheaper model the agent names for `model` over budget (a `degraded` event), or
    the BudgetExceeded for the agent's policy when there is none left to try."""
    cheaper = worker.cheaper_model(model)
    if not cheaper or cheaper in tried:  # none, or a loop back
        raise exc
    await worker.emit_event(ctx.envelope, "degraded", detail=f"{model} → {cheaper}: {exc}")
    return cheaper
