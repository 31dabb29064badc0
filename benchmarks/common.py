"""What the benchmarks share: the plain bus hop every figure is compared with."""

from __future__ import annotations

import asyncio
import statistics
import time

from relaybus.bus import Bus, Consumer, Delivery, new_envelope


async def plain_hop_us(bus: Bus, agent: str = "plainhop", count: int = 300) -> float:
    """p50 µs of one plain bus hop (publish with PubAck → consumer handler), one at a time."""
    got: asyncio.Queue[float] = asyncio.Queue()

    async def handler(d: Delivery) -> None:
        got.put_nowait(time.perf_counter())

    stop = asyncio.Event()
    task = asyncio.create_task(Consumer(bus, agent, handler, concurrency=1).run(stop))
    await asyncio.sleep(0.3)
    lat = []
    for _ in range(count):
        t = time.perf_counter()
        await bus.publish(new_envelope(kind="task", sender="bench", recipient=agent, payload=b"{}"))
        lat.append((await got.get() - t) * 1e6)
    stop.set()
    await task
    return statistics.median(lat)
