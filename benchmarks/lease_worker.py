"""One benchmark process: N costed steps decided through a budget lease; prints its stats."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from relaybus.bus import Bus, Settings
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import BudgetExceeded
from relaybus.services.ledger.lease import Lease


async def main(steps: int, chunk: int) -> None:
    lat = []
    spent = 0
    async with Bus(Settings.from_env(os.environ), name="lease-bench") as bus:
        client = LedgerClient(bus)
        await client.query("ping")
        lease = Lease(
            client,
            payer="user:bench",
            payee="tool:x",
            levels=["run:LEASE", "user:bench"],
            chunk=chunk,
        )
        started = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            try:
                await lease.spend(1)
            except BudgetExceeded:
                break
            spent += 1
            lat.append((time.perf_counter() - t) * 1e6)
        await lease.settle()
        elapsed = time.perf_counter() - started
    print(json.dumps({"lat": lat, "spent": spent, "settled": lease.settled, "elapsed": elapsed}))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
