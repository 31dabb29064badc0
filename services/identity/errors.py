"""Errors of the identity layer (RelayErrors, so they travel as ErrorInfo and are rebuilt by
name on the other side)."""

from __future__ import annotations

from relaybus.bus import RelayError


class ChainInvalid(RelayError):
    """A delegation chain failed verification; the message names the failing link."""


class RevocationUnknown(ChainInvalid):
    """The revocation watch is not live (NATS unreachable or failing over): no chain can be
    verified until it is. Fail closed, but it passes: a task is retried, not refused."""
