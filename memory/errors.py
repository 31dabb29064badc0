"""The memory service's errors (RelayErrors: they travel as ErrorInfo and are rebuilt by name)."""

from __future__ import annotations

from relaybus.bus.errors import RelayError

__all__ = ["MemoryRefused"]


class MemoryRefused(RelayError):
    """A memory operation was refused; the message says why."""
