"""Tracing overhead per hop: the same relay chain with tracing off (no SDK provider, the
default) and on (SDK provider, spans written as JSON lines like RELAYBUS_TRACE_DIR does),
measured side by side in one process on one embedded server, next to a plain bus hop.

Each hop: a consumer handler starts the `invoke_agent` span from the message's trace context
and publishes the next hop's envelope under it (so the context is injected into its headers).

    python benchmarks/tracing.py [--hops 400] [--rounds 3]

Also the span files' own cost: CPU per span written by the JSON-lines exporter (2,000 spans of
the runtime's shape, handed over in the BatchSpanProcessor's batches of 512; best of 5).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import plain_hop_us
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from relaybus.bus import (
    Bus,
    Consumer,
    Delivery,
    NatsServer,
    Settings,
    default_topology,
    ensure,
    tracing,
)
from relaybus.bus.envelope import Envelope
from relaybus.bus.telemetry import Telemetry


async def relay_hop_us(bus: Bus, agent: str, hops: int) -> float:
    """p50 µs per hop of a chain where each handler publishes the next hop under its span."""
    times: list[float] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        env = d.envelope
        times.append(time.perf_counter())
        span = tracing.TRACER.start_span(
            f"invoke_agent {agent}",
            context=tracing.run_context(d.headers, env.run_id, env.id),
            kind=SpanKind.CONSUMER,
            attributes={"relaybus.run_id": env.run_id, "relaybus.delivery_count": d.attempt},
        )
        with trace.use_span(span, end_on_exit=True):
            if env.hop + 1 >= hops:
                done.set()
                return
            await bus.publish(
                Envelope(
                    id=f"{env.run_id}-{env.hop + 1}",
                    run_id=env.run_id,
                    kind="task",
                    sender=agent,
                    recipient=agent,
                    hop=env.hop + 1,
                    max_hops=hops + 1,
                )
            )

    stop = asyncio.Event()
    task = asyncio.create_task(Consumer(bus, agent, handler, concurrency=1).run(stop))
    await asyncio.sleep(0.3)
    run_id = f"R{time.monotonic_ns()}"
    await bus.publish(
        Envelope(id=f"{run_id}-0", run_id=run_id, kind="task", sender="bench", recipient=agent)
    )
    await asyncio.wait_for(done.wait(), 120)
    stop.set()
    await task
    gaps = [(b - a) * 1e6 for a, b in itertools.pairwise(times)]
    return statistics.median(gaps)


def export_us_per_span(directory: Path, spans_n: int = 2000, batch: int = 512) -> float:
    """CPU time per span of `JsonLinesExporter.export` (what the batch thread spends)."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    finished: list[ReadableSpan] = []

    class Keep(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            finished.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("bench")
    for n in range(spans_n):
        attributes = {
            "relaybus.run_id": "01M97K9ZB9DDKWYGYB8H0M3MQB",
            "relaybus.task_id": "01M97K9ZBTCT00WGRGYPHV2XGF",
            "relaybus.agent": "bench",
            "relaybus.attempt": 1,
            "n": n,
        }
        with tracer.start_as_current_span("invoke_agent bench", attributes=attributes) as span:
            span.add_event("step", {"relaybus.step": "tool stamp"})
    exporter = tracing.JsonLinesExporter(directory / "export-bench.jsonl")
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for at in range(0, spans_n, batch):
            exporter.export(finished[at : at + batch])
        best = min(best, time.process_time() - started)
    exporter.shutdown()
    return best * 1e6 / spans_n


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hops", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        settings = Settings.from_env({}, nats_url=server.url, nats_auth=False)
        async with Bus(settings, name="bench") as bus:
            await ensure(bus, default_topology(bus.subjects))
            plain = await plain_hop_us(bus)
            off = [await relay_hop_us(bus, f"off{i}", args.hops) for i in range(args.rounds)]
            traced = settings.model_copy(update={"trace_dir": Path(tmp) / "spans"})
            with Telemetry("bench", traced):
                on = [await relay_hop_us(bus, f"on{i}", args.hops) for i in range(args.rounds)]
            spans = sum(1 for _ in (Path(tmp) / "spans").glob("*.jsonl"))
        export_us = export_us_per_span(Path(tmp))
    off_us, on_us = statistics.median(off), statistics.median(on)
    out = {
        "plain_bus_hop_us": round(plain, 1),
        "relay_hop_tracing_off_us": round(off_us, 1),
        "relay_hop_tracing_on_us": round(on_us, 1),
        "added_per_hop_ms": round((on_us - off_us) / 1000, 3),
        "on_over_off": round(on_us / off_us, 3),
        "target_added_ms": 0.15,
        "span_files": spans,
        "exporter_cpu_us_per_span": round(export_us, 1),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:<28} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
