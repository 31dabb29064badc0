"""Payments: money agents move on a user's behalf through a payment provider, mirrored in the
ledger as two-phase transfers (authorize → capture, or void; refunds never above captures)."""
