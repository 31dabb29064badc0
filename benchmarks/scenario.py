"""The seed scenario's run latency, and what the same number of raw nats-py hops costs.

Starts what `relaybus demo` starts, in a temporary home (nats-server, identity, ledger, memory,
the four demo agents as processes, the scripted model and a recording SMTP server), then submits
the demo request `--runs` times one after another, timing each from submit to its completed
event (the first run includes the research agent's first-use corpus ingestion). Side by side, on
the same server: a raw nats-py chain of as many JetStream hops (publish with PubAck → pull fetch
→ ack) as the run made messages.

    python benchmarks/scenario.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from runtime import percentile

from relaybus.agents.demo.procs import SELF_COMMAND, Processes
from relaybus.agents.demo.setup import (
    DEMO_USER,
    RUN_BUDGET,
    SPECS,
    register_demo,
    request_payload,
    write_prices,
)
from relaybus.agents.submit import submit
from relaybus.bus import Bus, Settings
from relaybus.bus.feed import EventFeed
from relaybus.bus.stack import read_stack
from relaybus.bus.streams import StreamSpec, ensure_stream
from relaybus.bus.supervisor import start_detached, stop_stack


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


async def handoffs_of(bus: Bus, run_id: str) -> int:
    """How many tasks the run handed to other agents (its `call` and `handoff` events)."""
    count = 0
    async with EventFeed(bus, run_id, replay=True) as feed:
        while (event := await feed.next(0.5)) is not None:
            count += event.kind in ("call", "handoff")
    return count


async def measure(home: Path, runs: int, procs: Processes) -> dict[str, object]:
    settings = Settings.from_env(
        {},
        home=home,
        identity=True,
        ledger=True,
        llm_model="scripted",
        prices=write_prices(home, "scripted"),
        log_level="WARNING",
    )
    model = procs.start_server("model", "RELAYBUS_LLM_BASE_URL", "dev", "model")
    smtp = procs.start_server(
        "smtp", "RELAYBUS_SMTP_URL", "dev", "smtp", "--mailbox", str(home / "mailbox.jsonl")
    )
    settings = settings.with_values(llm_base_url=model, smtp_url=smtp)
    await asyncio.to_thread(start_detached, settings, SELF_COMMAND)
    record = read_stack(settings)
    if record is None:
        raise RuntimeError(f"the stack did not start; see {home}/logs")
    settings = settings.model_copy(update={"nats_url": record.nats_url})
    payload = json.dumps(request_payload()).encode()
    latencies, hops, costs = [], [], []
    async with Bus(settings, name="bench-scenario") as bus:
        token = await register_demo(bus, home)
        for name, spec in SPECS.items():
            procs.start(name, settings.env(), "agent", "run", spec)
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
            hops.append(await handoffs_of(bus, outcome.run_id))
            costs.append(outcome.cost)
        messages = 2 * (1 + max(hops))  # the root task and every call/handoff, and their results
        raw = await raw_chain_ms(bus, messages, runs)
    warm = latencies[1:] or latencies
    return {
        "runs": runs,
        "first_run_ms": latencies[0],
        "run_p50_ms": percentile(warm, 0.5),
        "run_max_ms": max(warm),
        "hops": max(hops),
        "raw_messages": messages,
        "raw_chain_p50_ms": percentile(raw, 0.5),
        "ratio": percentile(warm, 0.5) / percentile(raw, 0.5),
        "cost_per_run": costs[-1],
        "_settings": settings,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relaybus-bench-") as tmp:
        home = (Path(tmp) / "home").resolve()
        procs = Processes(home / "logs")
        try:
            out = asyncio.run(measure(home, args.runs, procs))
        finally:
            procs.stop_all()
            stop_stack(Settings.from_env({}, home=home))
    out.pop("_settings", None)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"the scenario x{out['runs']}: first run {out['first_run_ms']:.0f} ms (ingests the "
        f"corpus), then p50 {out['run_p50_ms']:.0f} ms (max {out['run_max_ms']:.0f} ms), "
        f"{out['hops']} handoffs, cost {out['cost_per_run']} micro-units"
    )
    print(
        f"raw nats-py chain of {out['raw_messages']} JetStream hops: p50 "
        f"{out['raw_chain_p50_ms']:.1f} ms; scenario/raw = {out['ratio']:.1f}x "
        "(the rest is LLM calls, memory search, SMTP, identity, ledger and journal)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
