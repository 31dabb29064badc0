"""The raw nats-py baseline of benchmarks/load.py: one hop of a three-hop pipeline.

    python raw_hop_worker.py URL STREAM_PREFIX HOP   (HOP 0..2; hop 2 answers on core NATS)

Pulls from `<prefix>.raw.<hop>`, publishes the same bytes to the next hop with PubAck, acks.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import nats
import nats.errors


async def main(url: str, prefix: str, hop: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"{prefix}.raw.{hop}", durable=f"raw{hop}")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(64, timeout=0.5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            if hop < 2:
                await js.publish(f"{prefix}.raw.{hop + 1}", msg.data)
            else:
                await nc.publish(f"{prefix}.rawdone", msg.data)
            await msg.ack()
    await sub.unsubscribe()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
