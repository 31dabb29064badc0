"""Payment errors (RelayErrors: they travel as ErrorInfo and are rebuilt by name)."""

from __future__ import annotations

from relaybus.bus.errors import RelayError

__all__ = ["PaymentRefused"]


class PaymentRefused(RelayError):
    """A payment was refused: outside the chain's limits, by the provider (declined, over-refund,
    bad state), or by a rejected approval. Permanent: retrying would not change the answer."""
