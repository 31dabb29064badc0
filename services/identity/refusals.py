"""Audit of refusals nobody authenticated for: bounded, so a flood of bad requests cannot
flood the audit stream (nobody may purge it) or bury a user's trail under records that only
claim their name."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from relaybus.bus import Bus

from .client import publish_audit
from .messages import AuditRecord

log = logging.getLogger("relaybus.audit")


class RefusalAudit:
    """Writes at most `burst` records per `window_s` for each (action, principal) and at most
    `total` for all of them; the rest are counted, and the next record of that kind after the
    window says how many were not written one by one (and the log says it at once)."""

    def __init__(
        self,
        bus: Bus,
        *,
        burst: int = 20,
        total: int = 200,
        window_s: float = 60.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.burst, self.total, self.window_s = burst, total, window_s
        self.max_keys = max_keys
        self.clock = clock
        self._window_start = clock()
        self._written = 0
        self._per_key: OrderedDict[tuple[str, str], list[int]] = OrderedDict()  # [written, held]

    async def __call__(self, record: AuditRecord) -> bool:
        """Audit `record` unless its kind is over the limit; True if it was written."""
        now = self.clock()
        if now - self._window_start >= self.window_s:
            self._window_start, self._written = now, 0
            for counts in self._per_key.values():
                counts[0] = 0
        key = (record.action[:128], record.principal[:128])  # claimed names can be huge
        counts = self._per_key.pop(key, [0, 0])
        self._per_key[key] = counts  # most recent last; the oldest kinds are forgotten first
        while len(self._per_key) > self.max_keys:
            self._per_key.popitem(last=False)
        if counts[0] >= self.burst or self._written >= self.total:
            counts[1] += 1
            if counts[1] == 1:
                log.warning(
                    "refusals of %s for %s over %d a minute: counting, not recording each",
                    record.action,
                    record.principal,
                    self.burst,
                )
            return False
        if counts[1]:
            record = msgspec.structs.replace(
                record, detail={**record.detail, "not_recorded_before": counts[1]}
            )
            counts[1] = 0
        counts[0] += 1
        self._written += 1
        await publish_audit(self.bus, record)
        return True
