"""`Context`: what a handler gets besides its task — the run, its principal, a bound logger."""

from __future__ import annotations

import logging
from typing import Any

from bus import Envelope


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[run {extra.get('run_id')} {extra.get('agent')}] {msg}", kwargs


class Context:
    """Per-task context. The durable-execution operations build on this in `agents.durable`."""

    def __init__(self, agent: str, envelope: Envelope, attempt: int) -> None:
        self.agent = agent
        self.envelope = envelope
        self.attempt = attempt
        self.log = RunLogger(
            logging.getLogger(f"relaybus.agent.{agent}"),
            {"run_id": envelope.run_id, "agent": agent},
        )

    @property
    def run_id(self) -> str:
        return self.envelope.run_id

    @property
    def principal(self) -> str:
        """Who the run acts for: the root of the chain, else the original sender."""
        if self.envelope.chain:
            return self.envelope.chain[0].subject
        return self.envelope.sender
