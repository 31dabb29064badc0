"""One benchmark process: N hold+capture steps against the ledger; prints step latencies (µs)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from relaybus.bus import Bus, Settings
from relaybus.services.ledger.client import LedgerClient


async def main(steps: int) -> None:
    lat = []
    async with Bus(Settings.from_env(os.environ), name="ledger-bench") as bus:
        ledger = LedgerClient(bus)
        await ledger.query("ping")
        for i in range(steps):
            op = f"{os.getpid()}-{i}"
            t = time.perf_counter()
            await ledger.hold(f"h{op}", "user:bench", "tool:x", 1, ["run:BENCH", "user:bench"])
            await ledger.capture(f"c{op}", f"h{op}", 1)
            lat.append((time.perf_counter() - t) * 1e6)
    print(json.dumps(lat))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
