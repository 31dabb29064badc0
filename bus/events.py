"""Run lifecycle events on `<prefix>.event.<run>.<kind>` and dead-letter records (JSON on the wire)."""

from __future__ import annotations

import time

import msgspec

from .errors import ErrorInfo


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One thing that happened in a run; `from`/`to` are the agents of a handoff. The kinds
    are the runtime's (relaybus.services.runs.state.EventKind); the bus itself publishes only
    `dead_lettered`.

    `envelope_id` is the task it happened in (`parent_id`: the task waiting for that one);
    `child_id` the task a `call` or `handoff` created. `latency_ms`: queue time on `started`,
    run time on a `step` (tool or step call) and on a task's end. `cost`: micro-units charged
    (a tool call's price; on the run's final event, what the ledger captured for the run).
    A task that ends quickly publishes no `started`: its end event carries the `attempt` and
    the queue time (`queued_ms`) instead."""

    run_id: str
    kind: str
    time: float = msgspec.field(default_factory=time.time)
    sender: str = msgspec.field(default="", name="from")
    recipient: str = msgspec.field(default="", name="to")
    envelope_id: str = ""
    attempt: int = 0
    detail: str = ""
    error: ErrorInfo | None = None
    result: msgspec.Raw = msgspec.Raw()
    cost: int = 0
    latency_ms: float = 0.0
    queued_ms: float = 0.0
    parent_id: str = ""
    child_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    score: float | None = None


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A message that will not be processed, kept with why, for `relaybus dlq`."""

    agent: str
    subject: str
    reason: str
    attempts: int
    time: float
    data: bytes
    headers: dict[str, str] = {}
    envelope_id: str = ""
    run_id: str = ""
    last_error: ErrorInfo | None = None


event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)
dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
