"""Waiters: N concurrent `submit(wait=True)` calls, and no consumer left behind.

Every waiting submission used to open an ordered consumer on the events stream, and nats-server
caps a stream at 1,000 consumers: past that, waiters failed. Waiting now reads the run record,
woken by a core subscription (agents/waiting.py). Every client submits, then waits; the agent
processes start only once all N wait, so N waits are open at once. Side by side on one embedded
server: the same N tasks through raw nats-py (JetStream publish with PubAck → a pull consumer,
running from the start, answers on a core reply subject each waiter subscribed to; no run
records, no journal). Prints both times, the ratio, errors, the most waits open at once and the
consumers left on the events stream; exits non-zero on any failed wait or leftover consumer.

    python benchmarks/waiters.py [--waiters 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runtime import start, stop

from relaybus.agents.submit import submit
from relaybus.agents.waiting import await_outcome
from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.bus.streams import StreamSpec, ensure_stream

SUBMITTING = 256


async def ours(
    bus: Bus, waiters: int, timeout_s: float, start_agents: Callable[[], object]
) -> tuple[float, int, int]:
    """Every client submits (at most SUBMITTING at a time: one connection carries them all)
    and waits for its run; the agents start only once every client waits, so all of them wait
    at once. Returns the time, the failures and the most waiting at once."""
    submitting = asyncio.Semaphore(SUBMITTING)
    waiting = peak = 0
    all_waiting = asyncio.Event()

    async def one(i: int) -> bool:
        nonlocal waiting, peak
        async with submitting:
            accepted = await submit(bus, "bworker", json.dumps({"x": i}).encode())
        waiting += 1
        peak = max(peak, waiting)
        if peak == waiters:
            all_waiting.set()
        try:
            outcome = await await_outcome(bus, accepted.run_id, timeout_s)
        finally:
            waiting -= 1
        return outcome.status == "completed" and outcome.result == 2 * i

    async def agents_when_all_wait() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_waiting.wait(), timeout_s)
        start_agents()

    t = time.perf_counter()
    starter = asyncio.create_task(agents_when_all_wait())
    done = await asyncio.gather(*(one(i) for i in range(waiters)), return_exceptions=True)
    elapsed = time.perf_counter() - t
    await starter
    why = collections.Counter(
        f"{type(ok).__name__}: {str(ok)[:80]}" for ok in done if isinstance(ok, BaseException)
    )
    for reason, count in why.most_common(5):
        print(f"  {count} failed: {reason}", file=sys.stderr)
    return elapsed, sum(1 for ok in done if ok is not True), peak


async def raw(bus: Bus, waiters: int, timeout_s: float) -> tuple[float, int]:
    nc, js = bus.nc, bus.js
    await ensure_stream(bus, StreamSpec(name="RAWWAIT", subjects=("rawwait.task",)))
    pull = await js.pull_subscribe("rawwait.task", "rawwait")
    stop_worker = asyncio.Event()

    async def worker() -> None:
        while not stop_worker.is_set():
            try:
                msgs = await pull.fetch(256, timeout=0.2)
            except Exception:
                continue
            for msg in msgs:
                i = json.loads(msg.data)["x"]
                await nc.publish(f"rawwait.reply.{i}", json.dumps(2 * i).encode())
                await msg.ack()

    async def one(i: int) -> bool:
        sub = await nc.subscribe(f"rawwait.reply.{i}", max_msgs=1)
        await js.publish("rawwait.task", json.dumps({"x": i}).encode())
        msg = await sub.next_msg(timeout=timeout_s)
        return bool(json.loads(msg.data) == 2 * i)

    task = asyncio.create_task(worker())
    t = time.perf_counter()
    done = await asyncio.gather(*(one(i) for i in range(waiters)), return_exceptions=True)
    elapsed = time.perf_counter() - t
    stop_worker.set()
    await task
    await pull.unsubscribe()
    return elapsed, sum(1 for ok in done if ok is not True)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each wait may take")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        settings = Settings.from_env({}, nats_url=server.url, nats_auth=False)
        async with Bus(settings, name="bench") as bus:
            await ensure(bus, default_topology(bus.subjects))
            procs: list[subprocess.Popen[bytes]] = []
            try:
                ours_s, ours_failed, peak = await ours(
                    bus,
                    args.waiters,
                    args.timeout,
                    lambda: procs.append(start(settings, "bench_agents:Worker", "--replicas", "2")),
                )
            finally:
                stop(procs)
            raw_s, raw_failed = await raw(bus, args.waiters, args.timeout)
            events = await bus.js.stream_info(bus.subjects.stream("EVENTS"))
            left = events.state.consumer_count
    out = {
        "waiters": args.waiters,
        "relaybus_s": round(ours_s, 2),
        "relaybus_failed": ours_failed,
        "raw_s": round(raw_s, 2),
        "raw_failed": raw_failed,
        "time_vs_raw": round(ours_s / raw_s, 2),
        "most_waiting_at_once": peak,
        "event_consumers_left": left,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{args.waiters} concurrent waiting submissions: relaybus {ours_s:.2f}s "
            f"({ours_failed} failed), raw nats-py {raw_s:.2f}s ({raw_failed} failed), "
            f"{ours_s / raw_s:.1f}x raw; {peak} waiting at once at most; consumers left on the "
            f"events stream: {left}"
        )
    return 1 if ours_failed or left else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
