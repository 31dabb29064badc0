"""One spender process: holds and captures until the budget says no; prints what it captured."""

from __future__ import annotations

import asyncio
import os
import sys

from relaybus.bus import Bus, Settings
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import BudgetExceeded


async def main(run: str, unit: int) -> None:
    captured = 0
    async with Bus(Settings.from_env(os.environ), name="spender") as bus:
        ledger = LedgerClient(bus)
        for i in range(10_000):  # bounded
            op = f"{os.getpid()}-{i}"
            try:
                await ledger.hold(
                    f"h{op}", "user:alice", "tool:search", unit, [f"run:{run}", "user:alice"]
                )
            except BudgetExceeded:
                break
            await ledger.capture(f"c{op}", f"h{op}", unit)
            captured += unit
    print(captured, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
