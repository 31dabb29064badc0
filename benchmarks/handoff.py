"""Handoff benchmark: raw nats-py against the relaybus bus path, side by side on one server.

Raw:  js.publish → pull fetch → ack.
Bus:  envelope encode → Bus.publish (PubAck, dedupe id, trace hook) → Consumer loop
      (fetch → decode → handler → ack).
Each is measured with the consumer in the same process (1 proc) and in a second process
(2 procs): throughput with a window of in-flight publishes, and latency with one message
in flight at a time. Prints msgs/s, p50/p99 and the ratios bus/raw.

    python benchmarks/handoff.py [--messages 5000] [--latency-messages 500] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.js import api

from relaybus.bus import (
    Bus,
    Consumer,
    Delivery,
    NatsServer,
    Settings,
    default_topology,
    ensure,
    new_envelope,
)

WINDOW = 64


class Probe(msgspec.Struct):
    t0: int
    i: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- consumers (run in this process or a child) ---------------------------------------


async def raw_consume(url: str, stream: str, count: int, ready: Any) -> list[int]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    psub = await js.pull_subscribe(f"{stream.lower()}.x", durable="bench", stream=stream)
    ready.set()
    lat: list[int] = []
    last = [0]
    while len(lat) < count:
        try:
            msgs = await psub.fetch(WINDOW, timeout=1)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            probe = msgspec.json.decode(msg.data, type=Probe)
            await msg.ack()
            lat.append(time.monotonic_ns() - probe.t0)
            last[0] = time.monotonic_ns()
    await nc.drain()
    return [*lat, last[0]]


async def bus_consume(url: str, prefix: str, count: int, ready: Any) -> list[int]:
    settings = Settings.from_env({}, nats_url=url, prefix=prefix, nats_auth=False)
    lat: list[int] = []
    last = [0]
    stop = asyncio.Event()
    decoder = msgspec.json.Decoder(Probe)

    async def handler(d: Delivery) -> None:
        probe = decoder.decode(d.envelope.payload)
        lat.append(time.monotonic_ns() - probe.t0)
        if len(lat) >= count:
            last[0] = time.monotonic_ns()
            stop.set()

    async with Bus(settings, name="bench-consumer") as bus:
        consumer = Consumer(bus, "bench", handler, concurrency=WINDOW)
        task = asyncio.create_task(consumer.run(stop))
        await asyncio.sleep(0.2)
        ready.set()
        await task  # includes the consumer's graceful stop, which is not timed
    return [*lat, last[0]]


def child_main(kind: str, url: str, name: str, count: int, ready: Any, out: Any) -> None:
    fn = raw_consume if kind == "raw" else bus_consume
    out.send(asyncio.run(fn(url, name, count, ready)))


# -- producers ------------------------------------------------------------------------


async def produce(kind: str, bus: Bus, subject: str, count: int, window: int, gap_s: float) -> None:
    """Publish `count` probes with up to `window` in flight; `gap_s` paces the latency runs."""
    sem = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        async with sem:
            payload = msgspec.json.encode(Probe(t0=time.monotonic_ns(), i=i))
            if kind == "raw":
                await bus.js.publish(subject, payload)
            else:
                env = new_envelope(kind="task", sender="bench", recipient="bench", payload=payload)
                await bus.publish(env)
            if gap_s:
                await asyncio.sleep(gap_s)

    await asyncio.gather(*(one(i) for i in range(count)))


# -- one measurement ------------------------------------------------------------------


async def measure(
    kind: str, url: str, count: int, procs: int, window: int, tag: str
) -> dict[str, float]:
    name = f"B{tag}"
    prefix = name.lower()
    settings = Settings.from_env({}, nats_url=url, prefix=prefix, nats_auth=False)
    async with Bus(settings, name="bench-producer") as bus:
        if kind == "raw":
            config = api.StreamConfig(
                name=name, subjects=[f"{prefix}.x"], retention=api.RetentionPolicy.WORK_QUEUE
            )
            await bus.js.add_stream(config)
        else:
            await ensure(bus, default_topology(bus.subjects))
        target = name if kind == "raw" else prefix
        subject = f"{prefix}.x"
        if procs == 2:
            ctx = mp.get_context("spawn")
            ready = ctx.Event()
            parent_end, child_end = ctx.Pipe()
            child = ctx.Process(
                target=child_main, args=(kind, url, target, count, ready, child_end)
            )
            child.start()
            if not await asyncio.to_thread(ready.wait, 60):
                raise RuntimeError("benchmark consumer process did not start")
        else:
            local_ready = asyncio.Event()
            fn = raw_consume if kind == "raw" else bus_consume
            consume_task = asyncio.create_task(fn(url, target, count, local_ready))
            await local_ready.wait()
        started = time.monotonic_ns()
        await produce(kind, bus, subject, count, window, 0.0 if window > 1 else 0.002)
        if procs == 2:
            received = await asyncio.to_thread(parent_end.recv)
            child.join(30)
        else:
            received = await consume_task
        *received, last_arrival = received
        elapsed = (last_arrival - started) / 1e9
    lat_us = [n / 1000 for n in received]
    return {
        "msgs_per_s": count / elapsed,
        "p50_us": percentile(lat_us, 0.5),
        "p99_us": percentile(lat_us, 0.99),
        "mean_us": statistics.fmean(lat_us),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--latency-messages", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        n = 0
        for procs in (1, 2):
            for mode, count, window in (
                ("throughput", args.messages, WINDOW),
                ("latency", args.latency_messages, 1),
            ):
                pair = {}
                for kind in ("raw", "bus"):
                    n += 1
                    pair[kind] = await measure(kind, server.url, count, procs, window, f"{n}")
                rows.append(
                    {
                        "procs": procs,
                        "mode": mode,
                        "messages": count,
                        "raw": pair["raw"],
                        "bus": pair["bus"],
                        "throughput_ratio": pair["bus"]["msgs_per_s"] / pair["raw"]["msgs_per_s"],
                        "added_p50_us": pair["bus"]["p50_us"] - pair["raw"]["p50_us"],
                    }
                )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'procs':>5} {'mode':<10} {'raw msg/s':>10} {'bus msg/s':>10} {'bus/raw':>8} "
        f"{'raw p50':>8} {'bus p50':>8} {'raw p99':>8} {'bus p99':>8} {'+p50 µs':>8}"
    )
    for r in rows:
        raw, bus_ = r["raw"], r["bus"]
        print(
            f"{r['procs']:>5} {r['mode']:<10} {raw['msgs_per_s']:>10.0f} {bus_['msgs_per_s']:>10.0f} "
            f"{r['throughput_ratio']:>8.2f} {raw['p50_us']:>8.0f} {bus_['p50_us']:>8.0f} "
            f"{raw['p99_us']:>8.0f} {bus_['p99_us']:>8.0f} {r['added_p50_us']:>8.0f}"
        )
    print("latencies in µs, publish start → handler; throughput with 64 publishes in flight")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
