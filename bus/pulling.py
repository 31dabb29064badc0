"""Pull requests kept open and topped up: a durable consumer's messages arrive as they are
stored, with no request per message.

`fetch` asks the server for messages once per batch, and nats-py's batched fetch sends two
requests each time (a no-wait probe, then the waiting one): on a quiet consumer that is three
or four messages of overhead per task. Here a request for `n` messages stays open (up to
`expires_s`) and the server delivers into it as tasks come; it is renewed only when it ends or
when the slots it counts for are mostly spent (what nats.go's `Consume` does).

The count of messages still requested is kept from what the server says: each message takes
one, and a request that ends (408 expired, 409 with its pending count) gives back what it did
not deliver. When the server may have dropped requests without saying so (a reconnect, no
heartbeat for a while), the count is reset and the requests sent again; asking for too many
is harmless (a message beyond the free slots waits here, its lease kept alive).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .client import Bus

log = logging.getLogger("relaybus.pulling")

_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"


class OpenPulls:
    """The open pull requests of one consumer, delivering into `on_message`.

    `top_up(free)` asks for more when the consumer has `free` slots the open requests do not
    already cover; `check()` (called about once a second) resets the count when the server
    has gone quiet for longer than its heartbeats allow or the connection was re-made.
    `on_change` is called when a request ended, so the owner tops up again."""

    def __init__(
        self,
        bus: Bus,
        stream: str,
        durable: str,
        on_message: Callable[[Msg], None],
        on_change: Callable[[], None],
        *,
        expires_s: float = 30.0,
        heartbeat_s: float = 5.0,
    ) -> None:
        self.bus = bus
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.on_message = on_message
        self.on_change = on_change
        self.expires_s = expires_s
        self.heartbeat_s = heartbeat_s
        self.requested = 0  # messages the open requests may still deliver
        self.last_heard = time.monotonic()
        self._inbox = ""
        self._sub: Subscription | None = None
        self._reconnects = 0
        self._hold_until = 0.0  # after a refusal (409 without a count): not before this

    async def start(self) -> None:
        nc = self.bus.nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._received)
        self._reconnects = nc.stats["reconnects"]

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass

    async def request(self, batch: int) -> None:
        """Ask for `batch` more messages."""
        if batch <= 0 or self._sub is None or time.monotonic() < self._hold_until:
            return
        body = (
            f'{{"batch":{batch},"expires":{int(self.expires_s * 1e9)},'
            f'"idle_heartbeat":{int(self.heartbeat_s * 1e9)}}}'
        )
        if self.requested == 0:
            self.last_heard = time.monotonic()
        self.requested += batch
        try:
            await self.bus.nc.publish(self.next_subject, body.encode(), reply=self._inbox)
        except nats.errors.Error as exc:
            self.requested -= batch
            log.warning("pull request to %s failed: %r", self.next_subject, exc)
            raise

    def check(self) -> None:
        """Forget the count when the requests may be gone without the server saying so."""
        reconnects = self.bus.nc.stats["reconnects"]
        quiet = time.monotonic() - self.last_heard > 2.5 * self.heartbeat_s
        if self.requested and (reconnects != self._reconnects or quiet):
            log.info(
                "pull requests to %s presumed lost (%s); asking again",
                self.next_subject,
                "reconnected" if reconnects != self._reconnects else "no heartbeat",
            )
            self.requested = 0
            self.on_change()
        self._reconnects = reconnects

    async def _received(self, msg: Msg) -> None:
        self.last_heard = time.monotonic()
        headers = msg.headers
        status = headers.get(_STATUS) if headers else None
        if not status:
            self.requested = max(0, self.requested - 1)
            self.on_message(msg)
            return
        if status == "100":  # idle heartbeat: the requests are alive
            return
        pending = headers.get(_PENDING) if headers else None
        if pending is not None:
            self.requested = max(0, self.requested - int(pending))
        else:  # which request ended is unknown: ask again for all (extra ones only wait here)
            self.requested = 0
            self._hold_until = time.monotonic() + 0.5  # and not in a tight loop
        if status not in ("404", "408"):
            log.info(
                "pull request to %s ended: %s %s",
                self.next_subject,
                status,
                headers.get("Description", "") if headers else "",
            )
        self.on_change()
