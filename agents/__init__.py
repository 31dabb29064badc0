"""The relaybus agent runtime: write an `Agent`, run it as its own process."""

from .base import Agent
from .context import Context

__all__ = ["Agent", "Context"]
