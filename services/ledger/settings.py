"""The ledger's settings: the service's and those of the agents that charge through it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from relaybus.bus.settings import LayerSettings


class LedgerSettings(LayerSettings):
    """RELAYBUS_LEDGER, RELAYBUS_LEDGER_* and RELAYBUS_PRICES."""

    ledger: bool = False  # agents hold, capture and check budgets through the ledger service
    ledger_timezone: str = "UTC"
    ledger_currency: str = "USD"
    ledger_spike: float = Field(default=5.0, gt=1.0)
    ledger_lease: int = 0  # micro-units per leased chunk; 0: a hold and a capture per costed step
    ledger_partitions: int = Field(default=1, ge=1, le=64)  # writers, each owning a partition
    prices: Path | None = None
