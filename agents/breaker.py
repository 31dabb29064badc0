"""Circuit breakers per tool: open after N consecutive failures, half-open after T seconds."""

from __future__ import annotations

import time

from relaybus.agents.errors import CircuitOpen


class Breaker:
    """closed → (N failures in a row) → open → (T seconds) → half-open: one trial call;
    its success closes the breaker, its failure opens it again."""

    def __init__(self, name: str, failures: int = 5, reset_s: float = 30.0) -> None:
        self.name = name
        self.failures = failures
        self.reset_s = reset_s
        self.consecutive = 0
        self.opened_at = 0.0
        self.trial = False

    @property
    def state(self) -> str:
        if not self.opened_at:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.reset_s else "open"

    def before(self) -> None:
        """Raise CircuitOpen unless a call may go ahead now."""
        state = self.state
        if state == "open" or (state == "half-open" and self.trial):
            wait = max(0.0, self.reset_s - (time.monotonic() - self.opened_at))
            raise CircuitOpen(
                f"tool {self.name} failed {self.failures} times in a row; its breaker is open "
                f"(retry in {wait:.1f}s)"
            )
        if state == "half-open":
            self.trial = True

    def success(self) -> None:
        self.consecutive, self.opened_at, self.trial = 0, 0.0, False

    def failure(self) -> None:
        self.consecutive += 1
        if self.trial or self.consecutive >= self.failures:
            self.opened_at, self.trial = time.monotonic(), False

    def retry_after_s(self) -> float:
        return max(0.1, self.reset_s - (time.monotonic() - self.opened_at))
