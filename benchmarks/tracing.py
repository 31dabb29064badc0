"""Tracing overhead per hop: the same relay chain with tracing off (no SDK provider, the
default) and on (SDK provider, spans written as JSON lines like RELAYBUS_TRACE_DIR does),
measured side by side in one process on one embedded server, next to a plain bus hop.

Each hop: a consumer handler starts the `invoke_agent` span from the message's trace context
and publishes the next hop's envelope under it (so the context is injected into its headers).

    python benchmarks/tracing.py [--hops 400] [--rounds 3]
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
    off_us, on_us = statistics.median(off), statistics.median(on)
    out = {
        "plain_bus_hop_us": round(plain, 1),
        "relay_hop_tracing_off_us": round(off_us, 1),
        "relay_hop_tracing_on_us": round(on_us, 1),
        "added_per_hop_ms": round((on_us - off_us) / 1000, 3),
        "on_over_off": round(on_us / off_us, 3),
        "target_added_ms": 0.15,
        "span_files": spans,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:<28} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
