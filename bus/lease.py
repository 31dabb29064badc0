"""How sure a process is that the server still counts a delivered message as its own."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

#: A message's lease is in doubt once this share of the ack wait passed without a heartbeat:
#: the server may have handed the message to another replica meanwhile.
LEASE_MARGIN = 0.75


@dataclass(slots=True)
class Lease:
    """How sure this process is that the server still counts a message as its own. Heartbeats
    refresh it; a gap near the ack wait (the process stalled: CPU starvation, a blocking call)
    puts it in doubt for good, since another replica may already run the same task. Work with
    an effect asks `held()` just before it starts, and stops (without ack or nak) if not."""

    ack_wait_s: float = math.inf
    last_beat: float = field(default_factory=time.monotonic)
    lapsed: bool = False

    def beat(self, now: float) -> None:
        self._check(now)
        self.last_beat = now

    def held(self) -> bool:
        self._check(time.monotonic())
        return not self.lapsed

    def _check(self, now: float) -> None:
        if now - self.last_beat >= self.ack_wait_s * LEASE_MARGIN:
            self.lapsed = True
