"""What the console calls an event: the rows of the live feed and of a run's events table.

The worker reports a delivery of a task it finds half-done as `resumed`, "retried after a
failed attempt" when the attempt before let go of it, else "taken over after a crash" (workers
before this one said the latter for both). `Attempts` says more from what happened to the task
before, in the order the events were stored: which attempt failed and with what, a budget park,
a dead-letter replay; a takeover only when the previous attempt recorded nothing (its worker
vanished and the ack wait ran out)."""

from __future__ import annotations

from typing import Any

from relaybus.bus import Event
from relaybus.bus import cli as bus_cli

TAKEOVER = "taken over after a crash"
RETRY = "retried after a failed attempt"
# what happened last to a task: one of these, or a (re)start
_BEGUN = ("started", "resumed")
_REMEMBERED = (*_BEGUN, "retried", "parked", "dead_lettered", "suspended")
_MAX_TASKS = 20_000  # a long-running live feed forgets the oldest tasks beyond this


def event_row(event: Event, detail: str | None = None) -> dict[str, Any]:
    """One event as `watch --json` prints it, without the (possibly large) result body, with
    `detail` in place of the event's own when given."""
    row = bus_cli.event_json(event)
    row.pop("result", None)
    if detail is not None:
        row["detail"] = detail
    return row


class Attempts:
    """Follows each task's attempts through a stream of events (feed them in stored order)
    and says what a redelivery was."""

    def __init__(self, *, from_start: bool = False) -> None:
        self._last: dict[str, Event] = {}  # task → its last attempt-related event
        self.from_start = from_start  # fed a run's events from its first one

    def detail(self, event: Event) -> str:
        """The event's detail, with a worker's "taken over after a crash" corrected to what
        the task's earlier events say it was; remembers the event for the next ones."""
        detail = event.detail
        task = event.envelope_id
        if event.kind == "resumed" and detail in (TAKEOVER, RETRY) and task:
            before = self._last.get(task)
            if before is None and detail == RETRY:  # (its `retried` event was lost)
                detail = f"{RETRY} (attempt {event.attempt})" if event.attempt else RETRY
            else:
                detail = redelivery(before, event.attempt, self.from_start)
        if task and event.kind in _REMEMBERED:
            self._last.pop(task, None)  # re-insert: the dict stays ordered oldest first
            self._last[task] = event
            if len(self._last) > _MAX_TASKS:
                del self._last[next(iter(self._last))]
        return detail

    def row(self, event: Event) -> dict[str, Any]:
        return event_row(event, self.detail(event))


def redelivery(before: Event | None, attempt: int, from_start: bool = False) -> str:
    """What a delivery of a half-done task was, given the task's last attempt-related event
    before it (None: nothing of the task was seen: a feed that began later or, `from_start`,
    an attempt that died within the moment its `started` is held, leaving no event)."""
    tried = f"attempt {attempt}" if attempt else "another attempt"
    if before is None and not from_start:
        return f"delivered again ({tried})"
    if before is None:
        pass  # it began an attempt and then nothing (below)
    elif before.kind == "retried":
        failed = f"attempt {before.attempt} failed" if before.attempt else "an attempt failed"
        why = f": {before.error.type}" if before.error else ""
        return f"retried after {failed}{why} ({tried})"
    elif before.kind == "parked":
        return f"resumed after a budget park ({tried})"
    elif before.kind == "dead_lettered":
        return f"replayed from the dead-letter queue ({tried})"
    elif before.kind == "suspended":
        return f"resumed ({tried})"
    # it began an attempt and then nothing: its worker vanished, the ack wait ran out
    return f"{TAKEOVER}: the worker of the previous attempt stopped answering ({tried})"


def event_rows(events: list[Event]) -> list[dict[str, Any]]:
    """A run's events in time order, labelled."""
    attempts = Attempts(from_start=True)
    return [attempts.row(e) for e in sorted(events, key=lambda e: e.time)]
