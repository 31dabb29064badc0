"""The ledger's errors (RelayErrors: they travel as ErrorInfo and are rebuilt by name)."""

from __future__ import annotations

from relaybus.bus.errors import ErrorInfo, RelayError

__all__ = ["BudgetExceeded", "LedgerError", "RateLimited"]


class BudgetExceeded(RelayError):
    """A hold would take a budget past its limit; the message names the budget. `level`: the
    budget's level in its period (`user:dana@2026-12`); `resets_at`: when that period ends
    (epoch seconds; 0 for a budget without a period, which never resets by itself)."""

    def __init__(self, message: str, level: str = "", resets_at: float = 0.0) -> None:
        super().__init__(message)
        self.level = level
        self.resets_at = resets_at

    def details(self) -> dict[str, str | int | float | bool]:
        return {"level": self.level, "resets_at": self.resets_at}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        level, resets_at = info.details.get("level", ""), info.details.get("resets_at", 0.0)
        return cls(
            info.message,
            level if isinstance(level, str) else "",
            float(resets_at) if isinstance(resets_at, int | float) else 0.0,
        )


class LedgerError(RelayError):
    """A ledger operation was refused; nothing changed. The message says why."""


class HoldNotFound(LedgerError):
    """No hold has that id (in this partition, for a partitioned ledger)."""


class RateLimited(RelayError):
    """A rate limit refused this request for now; `retry_after_s` says when to retry."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> dict[str, str | int | float | bool]:
        return {"retry_after_s": self.retry_after_s}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        after = info.details.get("retry_after_s", 1.0)
        return cls(info.message, float(after) if isinstance(after, int | float) else 1.0)
