"""Ledger benchmark: hold+capture decisions per second and added latency per costed step,
with 1, 8 and 32 agent processes, beside a plain bus handoff on the same server; checks
that nothing was overspent.

    python benchmarks/ledger.py [--steps 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import plain_hop_us

from relaybus.bus import (
    Bus,
    NatsServer,
    Settings,
    default_topology,
    ensure,
)
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.ops import Budget

HERE = Path(__file__).resolve().parent


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="hold+capture steps per process")
    parser.add_argument("--lease-steps", type=int, default=20000, help="leased steps per process")
    parser.add_argument("--chunk", type=int, default=1000, help="lease chunk in micro-units")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        settings = Settings.from_env({}, nats_url=server.url, home=Path(tmp) / "home")
        env = {**os.environ, **settings.env(), "RELAYBUS_LOG_LEVEL": "WARNING"}
        ledger_proc = subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", "service", "ledger"], env=env
        )
        try:
            async with Bus(settings, name="bench") as bus:
                await ensure(bus, default_topology(bus.subjects))
                client = LedgerClient(bus)
                for _ in range(150):
                    try:
                        await client.query("ping")
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                budget = 32 * args.steps + 8 * args.steps + args.steps
                await client.set_budget("bench-budget", Budget(level="run:BENCH", limit=budget))
                hop = await plain_hop_us(bus, "lhop")
                print(f"plain bus handoff p50: {hop:.0f} µs")
                for procs in (1, 8, 32):
                    started = time.perf_counter()
                    workers = [
                        subprocess.Popen(
                            [sys.executable, str(HERE / "ledger_worker.py"), str(args.steps)],
                            env=env,
                            stdout=subprocess.PIPE,
                            text=True,
                        )
                        for _ in range(procs)
                    ]
                    lat: list[float] = []
                    for w in workers:
                        lat += json.loads(w.communicate(timeout=600)[0])
                    elapsed = time.perf_counter() - started
                    print(
                        f"{procs:>2} processes: {len(lat) / elapsed:,.0f} hold+capture steps/s aggregate "
                        f"(incl. process start), mean {statistics.fmean(lat):.0f} µs, "
                        f"p50 {statistics.median(lat):.0f} µs per step = {statistics.median(lat) / hop:.1f}x a plain handoff"
                    )
                rows = await client.query("levels", level="run:BENCH")
                spent = rows[0]["spent"]
                print(
                    f"budget {budget}, spent {spent}: {'no overspend' if spent <= budget else 'OVERSPENT'}"
                )
                lease_budget = int(args.lease_steps * 41 * 0.9)  # the 32-process round runs dry
                await client.set_budget(
                    "lease-budget", Budget(level="run:LEASE", limit=lease_budget)
                )
                print(f"with leases (chunk {args.chunk}), budget {lease_budget} over all rounds:")
                for procs in (1, 8, 32):
                    workers = [
                        subprocess.Popen(
                            [
                                sys.executable,
                                str(HERE / "lease_worker.py"),
                                str(args.lease_steps),
                                str(args.chunk),
                            ],
                            env=env,
                            stdout=subprocess.PIPE,
                            text=True,
                        )
                        for _ in range(procs)
                    ]
                    stats = [json.loads(w.communicate(timeout=600)[0]) for w in workers]
                    lat = [x for s in stats for x in s["lat"]]
                    steps = sum(s["spent"] for s in stats)
                    rate = steps / max(s["elapsed"] for s in stats)
                    mean = statistics.fmean(lat) if lat else 0.0
                    print(
                        f"{procs:>2} processes: {rate:,.0f} steps/s aggregate, mean {mean:.1f} µs added per step, "
                        f"{steps} steps decided, {sum(s['settled'] for s in stats)} settled"
                    )
                rows = await client.query("levels", level="run:LEASE")
                spent = rows[0]["spent"]
                print(
                    f"lease budget {lease_budget}, captured {spent}: "
                    f"{'no overspend' if spent <= lease_budget else 'OVERSPENT'}"
                )
        finally:
            ledger_proc.send_signal(signal.SIGTERM)
            ledger_proc.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
