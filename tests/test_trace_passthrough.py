"""A process that records no spans (no tracer provider) still passes on the trace context its
messages carried: work it starts elsewhere stays in the caller's trace."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relaybus.agents.submit import submit
from relaybus.bus import Bus, Settings
from relaybus.bus.tracing import read_spans

from .conftest import Spawn

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_a_process_without_tracing_passes_the_callers_trace_on(
    settings: Settings, bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    spans = tmp_path / "spans"
    spawn("runtime_agents:Relay")  # no tracer provider: records nothing
    spawn("runtime_agents:Child", RELAYBUS_TRACE_DIR=str(spans))  # records its spans

    def traced(headers: dict[str, str]) -> None:
        headers["traceparent"] = CALLER  # as an OpenTelemetry-instrumented caller sends it

    async with Bus(settings, name="caller", header_hook=traced) as caller:  # (`bus` provisioned)
        outcome = await submit(caller, "relay", b'{"x": 21}', wait=True, timeout_s=60)
    assert outcome.status == "completed" and outcome.result == 42, outcome
    child: list[dict[str, object]] = []
    for _ in range(100):  # bounded: 10 s for the span file's batch to be written
        child = [
            s
            for s in (read_spans(spans) if spans.exists() else [])
            if s["name"] == "invoke_agent child"
            and s["attributes"].get("relaybus.run_id") == outcome.run_id  # type: ignore[union-attr]
        ]
        if child:
            break
        await asyncio.sleep(0.1)
    assert child, "the child's span was never written"
    assert {s["trace_id"] for s in child} == {TRACE_ID}
