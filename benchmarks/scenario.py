"""The seed scenario's run latency, and what the same number of raw nats-py hops costs.

Starts the demo stack once (`relaybus demo --json --keep` in a temporary home: nats-server,
identity, ledger, memory, four agent processes, the scripted model and a recording SMTP server),
then submits the demo request again `--runs` times one after another, timing each from submit to
its completed event. Side by side, on the same server: a raw nats-py chain of as many JetStream
hops (publish with PubAck → pull fetch → ack) as the run made messages.

    python benchmarks/scenario.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtime import percentile

from agents.demo.setup import DEMO_USER, RUN_BUDGET, TOKEN_FILE, request_payload
from agents.submit import run_store, submit
from bus import Bus, Settings
from bus.streams import StreamSpec, ensure_stream

ROOT = Path(__file__).resolve().parent.parent


def relaybus(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYBUS_", "OTEL_"))}
    env["RELAYBUS_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def raw_chain_ms(bus: Bus, hops: int, rounds: int) -> list[float]:
    """Per round: `hops` sequential JetStream hops through one pull consumer, in ms."""
    await ensure_stream(bus, StreamSpec("RAWCHAIN", ("rawchain.>",), retention="workqueue"))
    sub = await bus.js.pull_subscribe("rawchain.hop", durable="rawchain")
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(hops):
            await bus.js.publish("rawchain.hop", str(i).encode())
            (msg,) = await sub.fetch(1, timeout=5)
            await msg.ack()
        out.append((time.perf_counter() - t0) * 1000)
    await sub.unsubscribe()
    return out


async def measure(home: Path, runs: int) -> dict[str, object]:
    settings = Settings.from_env({"RELAYBUS_HOME": str(home)})
    token = (home / TOKEN_FILE).read_text().strip()
    payload = json.dumps(request_payload()).encode()
    latencies, hops, costs = [], [], []
    async with Bus(settings, name="bench-scenario") as bus:
        records = await run_store(bus)
        for _ in range(runs):
            t0 = time.perf_counter()
            outcome = await submit(
                bus,
                "orchestrator",
                payload,
                sender=f"user:{DEMO_USER}",
                token=token,
                budget=RUN_BUDGET,
                wait=True,
                timeout_s=120,
            )
            latencies.append((time.perf_counter() - t0) * 1000)
            if outcome.status != "completed":
                raise RuntimeError(f"run {outcome.run_id} {outcome.status}: {outcome.error}")
            record = await records.get(outcome.run_id)
            hops.append(record.hops if record else 0)
            costs.append(outcome.cost)
        messages = 2 * max(hops)  # each call's task and its result
        raw = await raw_chain_ms(bus, messages, runs)
    return {
        "runs": runs,
        "run_p50_ms": percentile(latencies, 0.5),
        "run_max_ms": max(latencies),
        "hops": max(hops),
        "raw_messages": messages,
        "raw_chain_p50_ms": percentile(raw, 0.5),
        "ratio": percentile(latencies, 0.5) / percentile(raw, 0.5),
        "cost_per_run": costs[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relaybus-bench-") as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        first = relaybus(home, "demo", "--json", "--keep")
        demo_s = time.perf_counter() - t0
        try:
            if first.returncode != 0:
                print(first.stderr[-2000:], file=sys.stderr)
                return 1
            out = asyncio.run(measure(home, args.runs))
        finally:
            relaybus(home, "down")
    out["demo_wall_s"] = demo_s
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"relaybus demo from nothing: {demo_s:.1f} s; the scenario run again x{out['runs']}: "
        f"p50 {out['run_p50_ms']:.0f} ms (max {out['run_max_ms']:.0f} ms), {out['hops']} hops, "
        f"cost {out['cost_per_run']} micro-units"
    )
    print(
        f"raw nats-py chain of {out['raw_messages']} JetStream hops: p50 "
        f"{out['raw_chain_p50_ms']:.1f} ms; scenario/raw = {out['ratio']:.1f}x "
        "(the rest is LLM calls, memory search, SMTP, identity, ledger and journal)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
