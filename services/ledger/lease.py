"""Budget leases: an agent process holds a chunk of budget and decides steps locally.

A lease is an ordinary ledger hold, so leases can never add up to more than a budget. Steps
that fit in the chunk are decided in-process (no round trip); when one does not fit, the lease
is settled (the exact amount used is captured, the rest released) and a new chunk is held.
Near exhaustion the chunk halves until it is the step's own cost, so the last units of a
budget are decided exactly by the ledger.

Crash semantics: a process killed with an open lease never captures it; the hold expires.
Nothing is overspent; the steps it had decided locally since its last settlement go uncharged.
"""

from __future__ import annotations

import asyncio
import os
import time

from relaybus.services.ledger.errors import BudgetExceeded

from .client import LedgerClient


class Lease:
    def __init__(
        self,
        client: LedgerClient,
        *,
        payer: str,
        payee: str,
        levels: list[str],
        chunk: int,
        currency: str = "USD",
        tags: dict[str, str] | None = None,
        ttl_s: float = 60.0,
    ) -> None:
        if chunk <= 0:
            raise ValueError("a lease chunk must be a positive number of micro-units")
        self.client = client
        self.payer, self.payee, self.levels = payer, payee, levels
        self.chunk, self.currency, self.tags, self.ttl_s = chunk, currency, tags or {}, ttl_s
        self._prefix = f"lease-{os.getpid()}-{os.urandom(4).hex()}"
        self._count = 0
        self._hold = ""
        self._size = 0
        self._used = 0
        self._since = 0.0
        self._lock = asyncio.Lock()
        self.settled = 0  # total captured through this lease

    def try_spend(self, amount: int) -> bool:
        """Decide locally, without awaiting: True if the open chunk covers `amount`."""
        if (
            self._hold
            and self._used + amount <= self._size
            and time.monotonic() - self._since < self.ttl_s / 2
        ):
            self._used += amount
            return True
        return False

    def unspend(self, amount: int, hold: str) -> bool:
        """Give back a spend whose step failed, if its chunk is still open (True if it was)."""
        if self._hold == hold and self._used >= amount:
            self._used -= amount
            return True
        return False

    @property
    def hold_id(self) -> str:
        return self._hold

    async def spend(self, amount: int) -> str:
        """Charge `amount`: locally when it fits, else settle and lease a new chunk. Returns the
        hold it was charged to (for `unspend`)."""
        if self.try_spend(amount):
            return self._hold
        async with self._lock:
            if self.try_spend(amount):
                return self._hold
            await self._settle()
            size = max(self.chunk, amount)
            while True:
                hold_id = self._next_id("h")
                try:
                    await self.client.hold(
                        hold_id,
                        self.payer,
                        self.payee,
                        size,
                        self.levels,
                        currency=self.currency,
                        ttl_s=self.ttl_s,
                        tags=self.tags,
                    )
                    break
                except BudgetExceeded:
                    if size == amount:
                        raise
                    size = max(amount, size // 2)
            self._hold, self._size, self._used, self._since = (
                hold_id,
                size,
                amount,
                time.monotonic(),
            )
            return hold_id

    async def settle(self) -> None:
        async with self._lock:
            await self._settle()

    async def _settle(self) -> None:
        if not self._hold:
            return
        hold, used = self._hold, self._used
        self._hold, self._size, self._used = "", 0, 0
        if used:
            await self.client.capture(self._next_id("c"), hold, used, currency=self.currency)
            self.settled += used
        else:
            await self.client.void(self._next_id("v"), hold)

    def _next_id(self, kind: str) -> str:
        self._count += 1
        return f"{self._prefix}-{kind}{self._count}"
