"""Runtime benchmark: orchestrator → 3 workers → merge, with 1 and 3 worker replicas.

Prints runs/s and p50/p99 run latency (submit → completed event), and what a journaled
step costs next to a plain bus handoff, all measured in one run on one embedded server.

    python benchmarks/runtime.py [--runs 200] [--window 50] [--steps 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import plain_hop_us

from relaybus.agents.submit import submit
from relaybus.bus import (
    Bus,
    NatsServer,
    Settings,
    default_topology,
    ensure,
)
from relaybus.bus.feed import EventFeed

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start(settings: Settings, spec: str, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings.env(),
        "RELAYBUS_LOG_LEVEL": "WARNING",
        "PYTHONPATH": f"{ROOT / 'benchmarks'}{os.pathsep}{ROOT}",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "relaybus.cli", "agent", "run", spec, *args], env=env, cwd=ROOT
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def run_batch(
    bus: Bus, agent: str, payload: bytes, runs: int, window: int
) -> tuple[float, list[float]]:
    """Submit `runs` runs, at most `window` unfinished; returns (elapsed s, latencies ms)."""
    started: dict[str, float] = {}
    latencies: list[float] = []
    sem = asyncio.Semaphore(window)
    finished = asyncio.Event()
    async with EventFeed(bus) as feed:

        async def reader() -> None:
            while len(latencies) < runs:
                event = await feed.next(60)
                if event is None:
                    raise RuntimeError(f"runs stalled: {len(latencies)} of {runs} completed")
                if event.kind in ("completed", "failed") and event.run_id in started:
                    if event.kind == "failed":
                        raise RuntimeError(f"run failed: {event.error}")
                    latencies.append((time.perf_counter() - started.pop(event.run_id)) * 1000)
                    sem.release()
            finished.set()

        read = asyncio.create_task(reader())
        t0 = time.perf_counter()
        for _ in range(runs):
            await sem.acquire()
            t = time.perf_counter()
            outcome = await submit(bus, agent, payload)
            started[outcome.run_id] = t
        await asyncio.wait_for(finished.wait(), 120)
        await read
        return time.perf_counter() - t0, latencies


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        settings = Settings.from_env({}, nats_url=server.url, nats_auth=False)
        async with Bus(settings, name="bench") as bus:
            await ensure(bus, default_topology(bus.subjects))
            for replicas in (1, 3):
                procs = [
                    start(settings, "bench_agents:Orchestrator"),
                    start(settings, "bench_agents:Worker", "--replicas", str(replicas)),
                ]
                await asyncio.sleep(2.0)
                await run_batch(bus, "borch", b"{}", 10, 10)  # warm up
                elapsed, lat = await run_batch(bus, "borch", b"{}", args.runs, args.window)
                stop(procs)
                out[f"fanout_{replicas}_replicas"] = {
                    "runs": args.runs,
                    "runs_per_s": args.runs / elapsed,
                    "p50_ms": percentile(lat, 0.5),
                    "p99_ms": percentile(lat, 0.99),
                }
            procs = [start(settings, "bench_agents:Steps")]
            await asyncio.sleep(2.0)
            _, base = await run_batch(bus, "bsteps", b'{"steps": 0}', 20, 1)
            _, many = await run_batch(
                bus, "bsteps", json.dumps({"steps": args.steps}).encode(), 5, 1
            )
            stop(procs)
            step_ms = (percentile(many, 0.5) - percentile(base, 0.5)) / args.steps
            hop_ms = await plain_hop_us(bus, "bhop", 200) / 1000
            out["journal"] = {
                "step_ms": step_ms,
                "plain_handoff_ms": hop_ms,
                "step_over_handoff": step_ms / hop_ms,
            }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key in ("fanout_1_replicas", "fanout_3_replicas"):
        row = out[key]
        assert isinstance(row, dict)
        print(
            f"orchestrator → 3 workers → merge, {key.split('_')[1]} worker replica(s): {row['runs']} runs, "
            f"{row['runs_per_s']:.1f} runs/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
        )
    journal = out["journal"]
    assert isinstance(journal, dict)
    print(
        f"journaled step: {journal['step_ms'] * 1000:.0f} µs; plain bus handoff p50: "
        f"{journal['plain_handoff_ms'] * 1000:.0f} µs; step/handoff = {journal['step_over_handoff']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
