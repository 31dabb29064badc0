"""The connection owner: the one place nats-py is connected, published to and drained."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from . import envelope as wire
from . import tracing
from .errors import (
    ConnectionFailed,
    PermissionViolation,
    PublishFailed,
    ServiceUnavailable,
)
from .events import Event, event_encoder
from .publishing import keyed_message_id, message_id_key, publish_acked
from .replies import Replies
from .settings import Settings
from .stack import public_url, resolve_nats_url
from .subjects import Subjects, check_subject
from .tracing import inject

log = logging.getLogger("relaybus.bus")
_VIOLATION_RE = re.compile(r'permissions violation for (publish|subscription) to "?([^"\s]+)', re.I)
HeaderHook = Callable[[dict[str, str]], None]


def _connect_problem(exc: Exception) -> str:
    """A failed connect attempt in words: "connection refused", not the errno tuple."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class Bus:
    """An open NATS connection with JetStream, owned as an async context manager.

    async with Bus(settings) as bus:
        await bus.publish(envelope)
    """

    def __init__(
        self,
        settings: Settings,
        *,
        name: str = "relaybus",
        header_hook: HeaderHook | None = inject,
        connect_options: dict[str, Any] | None = None,
        agent: str | None = None,
    ) -> None:
        self.settings = settings
        # The agent this connection belongs to: its task messages and events carry its name as
        # the last subject token, the only subjects its NATS user may publish (docs/security.md).
        self.agent = agent
        self.subjects = Subjects(settings.prefix)
        self.name = name
        self.header_hook = header_hook
        self._connect_options = connect_options or {}
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._replies: Replies | None = None
        self.violations: collections.deque[tuple[str, str]] = collections.deque(maxlen=100)
        self.async_errors: collections.deque[str] = collections.deque(maxlen=100)
        self._closed = asyncio.Event()
        self._closing = False
        #: nats-py closed the connection for good (a protocol error), not `close()`
        self.lost = False
        self._stop_when_lost: list[asyncio.Event] = []
        self._violation_seen = asyncio.Event()
        self._auth_refused = asyncio.Event()
        self._connect_errors = 0
        self._last_connect_error = ""
        self._id_key = b""

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise ConnectionFailed("the bus is not connected: use `async with Bus(settings)`")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise ConnectionFailed("the bus is not connected: use `async with Bus(settings)`")
        return self._js

    @property
    def replies(self) -> Replies:
        """Requests and stream publishes awaiting their reply (cheaper than nats-py's `request`)."""
        if self._replies is None:
            raise ConnectionFailed("the bus is not connected: use `async with Bus(settings)`")
        return self._replies

    @property
    def url(self) -> str:
        return str(self.nc.connected_url.geturl()) if self.nc.connected_url else ""

    async def __aenter__(self) -> Bus:
        if self._nc is not None:
            raise ConnectionFailed("this Bus is already connected")
        url = resolve_nats_url(self.settings)
        self._id_key = message_id_key(url, self._connect_options)
        if "nkeys_seed" in self._connect_options:  # an nkey user: drop any user:password in the URL
            url = public_url(url)
        options: dict[str, Any] = {
            "servers": [u.strip() for u in url.split(",")],
            "name": self.name,
            "connect_timeout": self.settings.connect_timeout_s,
            "reconnect_time_wait": 0.5,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        options.update(self._connect_options)
        shown = public_url(url)
        self._connect_errors = 0  # counted, not logged one by one: the failure says it once
        client = NatsClient()
        connecting = asyncio.ensure_future(client.connect(**options))
        refused = asyncio.ensure_future(self._auth_refused.wait())
        try:
            done, _ = await asyncio.wait(
                {connecting, refused},
                timeout=self.settings.connect_timeout_s * 4,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if connecting not in done:
                await _give_up(client, connecting)
                if refused in done:
                    why = "it refused this connection's credentials (Authorization Violation)"
                elif self._connect_errors:
                    why = (
                        f"{self._last_connect_error} ({self._connect_errors} attempts in "
                        f"{self.settings.connect_timeout_s * 4:.0f}s)"
                    )
                else:
                    why = "timed out"
                raise ConnectionFailed(
                    f"cannot connect to NATS at {shown}: {why}; is the stack up "
                    "(`relaybus up --detach`) or RELAYBUS_NATS_URL right?"
                )
            connecting.result()
            self._nc = client
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            _close_socket(client)  # nats-py gave up (no reconnects asked for) with it open
            raise ConnectionFailed(
                f"cannot connect to NATS at {shown}: {exc or type(exc).__name__}; is the stack up "
                "(`relaybus up --detach`) or RELAYBUS_NATS_URL right?"
            ) from exc
        finally:
            refused.cancel()
            if self._nc is None and not connecting.done():  # its caller was cancelled meanwhile
                connecting.cancel()
                connecting.add_done_callback(lambda _: _close_socket(client))
        self._js = self._nc.jetstream(timeout=self.settings.request_timeout_s)
        self._replies = Replies(self._nc, self.settings.request_timeout_s)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        nc, self._nc, self._js = self._nc, None, None
        replies, self._replies = self._replies, None
        if nc is None or nc.is_closed:
            return
        try:
            if not nc.is_connected:  # the server is gone (or being retried): nothing to drain
                raise ConnectionError("not connected to NATS")
            await asyncio.wait_for(nc.drain(), timeout=self.settings.request_timeout_s + 5)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            # a process stopped while its server is away ends with this line, not a traceback
            log.warning("drain did not finish (%s); closing", exc or type(exc).__name__)
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()
        finally:
            if replies is not None:  # what the drain left unanswered fails now, not at its timeout
                replies.abandon()

    # -- async error surfacing ---------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        text = str(exc)
        match = _VIOLATION_RE.search(text)
        if match:
            self.violations.append((match[1].lower(), match[2]))
            self._violation_seen.set()
            self._violation_seen = asyncio.Event()
            log.error("NATS refused %s to %s for this connection", match[1], match[2])
        else:
            if "authorization violation" in text.lower():
                self._auth_refused.set()
            self.async_errors.append(text or type(exc).__name__)
            if self._nc is None and not self._closing:  # still making the first connection
                self._connect_errors += 1
                self._last_connect_error = _connect_problem(exc)
                log.debug("NATS connect attempt failed: %r", exc)
            else:
                log.warning("NATS async error: %r", exc)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS at %s", self.url)

    def stop_when_lost(self, stop: asyncio.Event) -> None:
        """Set `stop` if nats-py closes this connection for good (it never reconnects after a
        protocol error): a server left up on a dead connection answers nothing, so it stops,
        and `relaybus up`'s supervisor (or the operator's) starts it again."""
        self._stop_when_lost.append(stop)

    async def _on_closed(self) -> None:
        self._closed.set()
        if self._closing or self._nc is None:
            return
        self.lost = True
        last = self.async_errors[-1] if self.async_errors else "no error given"
        log.error("the NATS connection closed for good (%s); stopping this process", last)
        for stop in self._stop_when_lost:
            stop.set()

    def raise_violation(self, subject: str) -> None:
        """Raise PermissionViolation if the server refused `subject` on this connection."""
        for op, refused in self.violations:
            if refused.lower() == subject.lower():  # nats-py lowercases the error text
                raise PermissionViolation(
                    f"NATS refused {op} to {subject!r} for this connection's user; "
                    "check the agent's subject permissions (`relaybus identity nats-config`)"
                )

    # -- publishing --------------------------------------------------------------------

    def _finish_headers(self, env: wire.Envelope, headers: dict[str, str]) -> dict[str, str]:
        headers["Nats-Msg-Id"] = env.id
        tracing.inject(headers)  # no-op unless a span is current
        if self.header_hook is not None:
            self.header_hook(headers)
        return headers

    async def publish(
        self,
        env: wire.Envelope,
        subject: str | None = None,
        *,
        hints: dict[str, str] | None = None,
    ) -> int:
        """Store `env` in JetStream (PubAck awaited); returns the stream sequence.

        The envelope id is the `Nats-Msg-Id`, so a retried publish is stored once. `hints`:
        headers beside the envelope's that no reader may trust for more than a shortcut (a
        wrong one costs a retry, never a wrong decision).
        """
        if subject is None:
            if self.agent is None:
                subject = self.subjects.task_admitted(env.recipient)
            elif env.sender != self.agent:
                raise PublishFailed(
                    f"agent {self.agent} cannot send an envelope in the name of {env.sender!r}"
                )
            else:
                subject = self.subjects.task_from(env.recipient, self.agent)
        headers, body = wire.to_message(env, self.settings.max_payload_bytes)
        if hints:
            headers = {**hints, **headers}
        return await self.publish_bytes(subject, body, self._finish_headers(env, headers))

    def message_id(self, dedupe_key: str) -> str:
        """The `Nats-Msg-Id` this connection stores `dedupe_key` under.

        JetStream dedupes on it across the whole stream, so an id another connection can
        predict (a derived child or result id, a caller-chosen run id) could be taken first by
        anyone who may publish to the stream, silently swallowing the real message. With NATS
        auth on, the id is keyed with this connection's own NATS secret (an agent's nkey seed,
        shared by its replicas; a service's or operator's password): retries and replicas still
        dedupe, and nobody else can take the id. Without auth nothing is secret (dev)."""
        return keyed_message_id(self._id_key, dedupe_key)

    async def publish_bytes(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> int:
        """JetStream publish with retries on transient errors (same headers, same msg id)."""
        check_subject(subject)
        if headers and "Nats-Msg-Id" in headers and self._id_key:
            headers = {**headers, "Nats-Msg-Id": self.message_id(headers["Nats-Msg-Id"])}
        return await publish_acked(
            self.replies,
            subject,
            data,
            headers,
            retry_for_s=max(15.0, self.settings.request_timeout_s * 3),
            raise_refused=self.raise_violation,
        )

    async def publish_event(self, event: Event, *, durable: bool = False, once: str = "") -> None:
        """One run event on `<prefix>.event.<run>.<kind>[.<agent>]` (this connection's agent
        as the last token). `durable`: wait for JetStream's ack (a run's end); otherwise a
        core publish the events stream still stores (progress, for watching). `once` (durable
        only): an id under which the stream keeps the event once, however often it is sent.
        Tracebacks stay off the events stream, which more readers see than the run's record."""
        if event.error is not None and event.error.traceback:
            event = msgspec.structs.replace(event, error=event.error.public())
        subject = self.subjects.event(event.run_id, event.kind, self.agent or "")
        if durable:
            headers = {"Nats-Msg-Id": once} if once else None
            await self.publish_bytes(subject, event_encoder.encode(event), headers)
        else:
            await self.publish_core(subject, event_encoder.encode(event))

    async def publish_core(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None = None,
        *,
        confirm_s: float = 0.0,
    ) -> None:
        """Core publish (no stream ack). With `confirm_s`, flush and wait that long for the
        server to refuse it, raising PermissionViolation (nats-py only reports it asynchronously)."""
        check_subject(subject)
        await self.nc.publish(subject, data, headers=dict(headers) if headers else None)
        if confirm_s > 0:
            await self.confirm(subject, confirm_s)

    async def confirm(self, subject: str, within_s: float) -> None:
        """Flush, then raise PermissionViolation if the server refuses `subject` within `within_s`."""
        await self.nc.flush(timeout=max(1, int(within_s) + 1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while True:
            self.raise_violation(subject)
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                async with asyncio.timeout(left):
                    await self._violation_seen.wait()
            except TimeoutError:
                self.raise_violation(subject)
                return

    async def subscribe(self, subject: str, handler: Callable[[bytes], Awaitable[None]]) -> Any:
        """A core-NATS subscription (control messages); returns it so the caller can unsubscribe."""

        async def on_msg(msg: Any) -> None:
            await handler(bytes(msg.data))

        return await self.nc.subscribe(subject, cb=on_msg)

    async def subscribe_subjects(
        self, subject: str, handler: Callable[[str, bytes], Awaitable[None]]
    ) -> Any:
        """`subscribe`, with each message's own subject passed to `handler`."""

        async def on_msg(msg: Any) -> None:
            await handler(msg.subject, bytes(msg.data))

        return await self.nc.subscribe(subject, cb=on_msg)

    async def serve(
        self,
        subject: str,
        handler: Callable[[str, bytes], Awaitable[bytes]],
        queue: str = "",
        *,
        concurrency: int = 1,
    ) -> Any:
        """Answer requests on `subject` (wildcards allowed) with what `handler` returns, up to
        `concurrency` at once (the next request is read once a slot is free).
        A handler that raises is logged and answered with nothing, so the caller times out
        rather than trusting a half-done reply."""
        slots = asyncio.Semaphore(concurrency)
        in_hand: set[asyncio.Task[None]] = set()

        async def answer(msg: Any) -> None:
            try:
                reply = await handler(msg.subject, bytes(msg.data))
            except Exception:
                log.exception("request handler for %s failed", msg.subject)
                return
            finally:
                slots.release()
            if msg.reply:
                await self.nc.publish(msg.reply, reply)

        async def on_msg(msg: Any) -> None:
            await slots.acquire()
            if concurrency == 1:
                await answer(msg)
                return
            task = asyncio.create_task(answer(msg))
            in_hand.add(task)
            task.add_done_callback(in_hand.discard)

        return await self.nc.subscribe(subject, queue=queue, cb=on_msg)

    async def request(self, subject: str, data: bytes, timeout_s: float | None = None) -> bytes:
        """Core request/reply (services)."""
        check_subject(subject)
        headers: dict[str, str] = {}
        tracing.inject(headers)  # a traced caller's service work joins its trace
        try:
            msg = await self.replies.request(
                subject, data, headers or None, timeout_s or self.settings.request_timeout_s
            )
        except nats.errors.NoRespondersError as exc:
            raise ServiceUnavailable(
                f"no service answers on {subject!r}; is it running (`relaybus status`)?"
            ) from exc
        except nats.errors.TimeoutError as exc:
            self.raise_violation(subject)
            raise ConnectionFailed(f"no reply on {subject!r} in time") from exc
        except nats.errors.ConnectionClosedError as exc:
            raise ConnectionFailed(
                f"the connection closed before a reply on {subject!r} came"
            ) from exc
        return bytes(msg.data)


async def _give_up(client: NatsClient, connecting: asyncio.Future[None]) -> None:
    """Stop a connect given up on, and close the socket it may hold. nats-py keeps trying
    (servers in turn, for ever) and, cancelled between opening a socket and closing it
    itself, leaves that socket open until garbage collection: one per abandoned connect."""
    connecting.cancel()
    await asyncio.wait({connecting}, timeout=5)  # not `await connecting`: its cancel is not ours
    _close_socket(client)


def _close_socket(client: NatsClient) -> None:
    transport = getattr(client, "_transport", None)  # nats-py's own, not public
    if transport is not None:
        transport.close()
