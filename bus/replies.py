"""Requests and JetStream publishes that await their reply on one subscription per connection.

nats-py's `request` (and `js.publish`, built on it) makes a fresh future per call, wraps it in
`asyncio.wait_for`, and `js.publish` decodes each acknowledgement with `json.loads` and a
dataclass. On the hot path (every task, record, journal write and service call) that was about
a third of a publish's client CPU. Here a reply is matched by a random token on one wildcard
inbox, timed by one `call_later`, and an acknowledgement decoded by msgspec. Errors are
nats-py's own, raised as `request` and `js.publish` raise them (`TimeoutError`,
`NoRespondersError` / `NoStreamResponseError`, `APIError.from_error`), so every caller's
handling stays as it was.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

_NO_RESPONDERS = "503"


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode


class Replies:
    """Requests on `nc` whose replies come to one inbox subscription; stream publishes
    (`publish`) return the sequence their message was stored at."""

    def __init__(self, nc: NatsClient, timeout_s: float) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._prefix = ""
        self._sub: Subscription | None = None
        self._opening: asyncio.Lock | None = None

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> int:
        """Store `data` on `subject` and await its acknowledgement; returns its sequence."""
        try:
            msg = await self.request(subject, data, headers)
        except nats.errors.NoRespondersError:
            raise nats.js.errors.NoStreamResponseError from None
        try:
            ack = _decode_ack(msg.data)
        except msgspec.DecodeError:  # not an acknowledgement: say what came back
            ack = PubAck(error=_error_of(msg.data))
        if ack.error is not None:
            raise nats.js.errors.APIError.from_error(ack.error)
        return ack.seq

    async def request(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Msg:
        """The reply to `data` on `subject` (NoRespondersError if nobody listens there,
        TimeoutError if nobody answered within `timeout_s`)."""
        if self._sub is None:
            await self._open()
        # unguessable: whoever may publish to this connection's inbox (a service answering
        # one request, another client of the same NATS user) must not be able to plant the
        # answer to the next one
        token = secrets.token_hex(10)
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = acked
        timer = loop.call_later(timeout_s or self.timeout_s, self._expire, token)
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token, headers=headers)
            msg = await acked
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    def abandon(self) -> None:
        """Fail every request still awaiting its reply: the connection is closed (its
        subscription went with it), so none can come."""
        for acked in self._waiting.values():
            if not acked.done():
                acked.set_exception(nats.errors.ConnectionClosedError())
        self._waiting.clear()
        self._sub = None

    async def _open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._sub is None:
                prefix = self.nc.new_inbox() + "."
                self._sub = await self.nc.subscribe(prefix + "*", cb=self._acked)
                self._prefix = prefix

    async def _acked(self, msg: Msg) -> None:
        acked = self._waiting.get(msg.subject[len(self._prefix) :])
        if acked is not None and not acked.done():
            acked.set_result(msg)

    def _expire(self, token: str) -> None:
        acked = self._waiting.get(token)
        if acked is not None and not acked.done():
            acked.set_exception(nats.errors.TimeoutError())


def _error_of(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return {"code": 500, "description": f"unexpected reply {data[:80]!r}"}
