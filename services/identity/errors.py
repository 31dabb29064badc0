"""Errors of the identity layer (RelayErrors, so they travel as ErrorInfo and are rebuilt by
name on the other side)."""

from __future__ import annotations

from relaybus.bus import RelayError


class ChainInvalid(RelayError):
    """A delegation chain failed verification; the message names the failing link."""
