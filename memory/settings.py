"""Memory's settings: where the store lives, how text is embedded, and the background GC."""

from __future__ import annotations

from pydantic import Field

from relaybus.bus.settings import LayerSettings


class MemorySettings(LayerSettings):
    """RELAYBUS_MEMORY_*, RELAYBUS_QDRANT_URL and RELAYBUS_EMBEDDER."""

    qdrant_url: str | None = None
    embedder: str = "auto"  # auto | minilm | lexical
    memory_gc_interval_s: float = Field(default=3600.0, ge=0)  # 0: no background GC
    memory_retention_days: float = Field(default=30.0, ge=0)
    memory_ttl: str = "scratch=1"  # KIND=DAYS,KIND=DAYS
    memory_cap: int = Field(default=10_000, ge=0)  # current memories per tenant; 0: no cap
    memory_half_life_days: float = Field(default=30.0, gt=0)
    memory_duplicate_score: float = Field(default=0.95, ge=0, le=1)  # 0: no near-duplicate sweep
