"""The consume loop: fetch → decode → handler → ack / nak with delay / dead-letter.

One durable pull consumer per agent name, shared by every replica. Attempts are counted
here (the server's max_deliver is unlimited) so a message never stops being delivered
without first reaching the dead-letter stream with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import envelope as wire
from . import metrics, tracing
from .client import Bus
from .errors import (
    Abandon,
    ConfigError,
    EnvelopeInvalid,
    ErrorInfo,
    Refused,
    Reject,
    RelayError,
    Retry,
)
from .events import DeadLetter, Event, event_encoder
from .lease import Lease
from .position import position_of
from .pulling import OpenPulls
from .streams import ConsumerSpec, agent_consumer, ensure_consumer_ready
from .subjects import check_name

log = logging.getLogger("relaybus.consumer")


@dataclass(slots=True)
class Delivery:
    """One delivered message, decoded; what a handler receives."""

    envelope: wire.Envelope
    attempt: int
    headers: dict[str, str]
    subject: str
    sequence: int = 0
    stream: str = ""  # the stream `sequence` counts in (tasks and timers are two)
    source: str = ""  # the agent that sent it, from the subject; "" for a user or operator
    replayed: bool = False  # an operator put it back from the dead-letter queue
    started: float = field(default_factory=time.monotonic)
    lease: Lease = field(default_factory=Lease)  # refreshed by the consumer's heartbeats


Handler = Callable[[Delivery], Awaitable[None]]
#: Told of a message given up on for good (after its letter is stored): `(delivery, reason,
#: last error)`. The runtime fails the task there, so its caller and its run learn how it ended.
DeadLetterHook = Callable[[Delivery, str, "ErrorInfo | None"], Awaitable[None]]


def backoff_s(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Exponential delay before attempt `attempt + 1`."""
    return min(cap_s, base_s * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing message is tried (`attempts`, the first one included) and how long
    to wait before the next try: `backoff_s` doubling per attempt up to `max_backoff_s`."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"a retry policy needs at least 1 attempt, not {self.attempts}")
        if not 0 <= self.backoff_s <= self.max_backoff_s:
            raise ConfigError(
                f"retry backoff {self.backoff_s}s must be between 0 and its maximum "
                f"{self.max_backoff_s}s"
            )

    def delay_s(self, attempt: int) -> float:
        """The wait before attempt `attempt + 1`."""
        return backoff_s(attempt, self.backoff_s, self.max_backoff_s)


class Consumer:
    """Runs `handler` over the tasks of one agent until `stop` is set."""

    def __init__(
        self,
        bus: Bus,
        agent: str,
        handler: Handler,
        *,
        concurrency: int = 8,
        max_deliver: int | None = None,
        retry: RetryPolicy | None = None,
        ack_wait_s: float | None = None,
        grace_s: float = 30.0,
        pull_expires_s: float | None = None,
        spec: ConsumerSpec | None = None,
        on_dead_letter: DeadLetterHook | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.bus = bus
        self.agent = agent
        self.handler = handler
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy(attempts=max_deliver or bus.settings.max_deliver)
        self.max_deliver = self.retry.attempts
        self.ack_wait_s = ack_wait_s or bus.settings.ack_wait_s
        self.grace_s = grace_s
        # Under the ack wait: a replica that stalls lets its open requests lapse before the
        # server hands its stalled messages to another one, so none lands in a frozen process.
        self.pull_expires_s = pull_expires_s or min(30.0, self.ack_wait_s / 2)
        self.spec = spec or agent_consumer(bus.subjects, agent, self.ack_wait_s)
        self.on_dead_letter = on_dead_letter
        self._inflight: dict[int, tuple[Msg, Lease]] = {}  # id -> (message, its lease)
        self._slot_free = asyncio.Event()
        self._top_up_at = max(1, concurrency // 2)
        self._stopping = asyncio.Event()
        self._ticked = time.monotonic()  # the heartbeat loop's last turn
        self._stall = (0.0, 0.0)  # the last stall it saw: (from, to)
        self._partial_since = 0.0
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_consumer_ready(self.bus, self.spec)
        tasks: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.concurrency)
        self._stopping = stop

        def received(msg: Msg) -> None:
            # the lease starts now (a message beyond the free slots waits for one, kept alive),
            # or when the process stalled, if it just did: the message may have waited through
            # the stall in the socket's buffer, its ack wait running at the server
            self._inflight[id(msg)] = (msg, Lease(self.ack_wait_s, self._alive_since()))
            task = asyncio.create_task(self._process(msg, slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        pulls = OpenPulls(
            self.bus,
            self.spec.stream,
            self.spec.durable,
            received,
            self._slot_free.set,
            expires_s=self.pull_expires_s,
            heartbeat_s=min(5.0, self.pull_expires_s / 4),
        )
        await pulls.start()
        beat = asyncio.create_task(self._heartbeats(stop))
        waker = asyncio.create_task(self._wake_on(stop))
        try:
            checked = time.monotonic()
            while not stop.is_set():
                self._slot_free.clear()
                try:
                    wait_s = await self._top_up(pulls)
                except nats.errors.ConnectionClosedError:
                    break
                # not `asyncio.wait_for`: on Python 3.11 a cancellation that lands while the
                # event is being set is swallowed (it returns True), and this loop, which only
                # `stop` ends, would then never end (a crashed agent's task never finished)
                try:
                    async with asyncio.timeout(wait_s):
                        await self._slot_free.wait()
                except TimeoutError:
                    pass
                if time.monotonic() - checked >= 1.0:
                    checked = time.monotonic()
                    pulls.check()
            await pulls.close()  # no more deliveries; what arrived already is drained below
            if tasks:
                _, late = await asyncio.wait(set(tasks), timeout=self.grace_s)
                for task in late:  # unacked: redelivered to another replica after ack_wait
                    task.cancel()
        except asyncio.CancelledError:  # stopped at once (an embedding app, a test's crash):
            for task in tasks:  # nothing in flight is acked; it comes back after ack_wait
                task.cancel()
            raise
        finally:
            beat.cancel()
            waker.cancel()
            await pulls.close()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._slot_free.set()

    async def _top_up(self, pulls: OpenPulls) -> float:
        """Ask for as many messages as there are slots the open requests do not cover: at
        once when half the slots are uncovered (one request per several tasks on a quiet
        consumer, not one each); when nothing is requested, a small batch after a short
        grace, so a busy consumer asks for many messages per request instead of one.
        Returns how long to wait before looking again."""
        want = self.concurrency - len(self._inflight) - pulls.requested
        if want <= 0:
            self._partial_since = 0.0
            return 1.0
        if want < self._top_up_at:
            if pulls.requested > 0:
                return 1.0  # enough is asked for; top up when more slots are uncovered
            if self._inflight:
                now = time.monotonic()
                if self._partial_since == 0.0:
                    self._partial_since = now
                if now - self._partial_since < 0.02:
                    return 0.02 - (now - self._partial_since)
        self._partial_since = 0.0
        try:
            await pulls.request(want)
        except nats.errors.ConnectionClosedError:
            raise
        except nats.errors.Error:
            return 0.5
        return 1.0

    def _alive_since(self) -> float:
        """Now, or the start of a stall the process just woke from (the heartbeat loop saw
        it, or is late to run and so in it still)."""
        now = time.monotonic()
        tick = self.ack_wait_s / 8
        if now - self._ticked > 1.5 * tick:  # the heartbeat loop has not run: stalled still
            return self._ticked
        if now - self._stall[1] < tick:  # woke from one within a turn of the heartbeat loop
            return self._stall[0]
        return now

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        """Tell the server every message still in hand is in progress, each at least every
        quarter of the ack wait: a process starved of CPU for most of the ack wait (a busy
        host) still keeps its messages, so no second replica starts the same task meanwhile."""
        every = self.ack_wait_s / 4
        self._ticked = time.monotonic()
        while True:
            await asyncio.sleep(every / 2)
            now = time.monotonic()
            if now - self._ticked > 1.5 * every / 2:
                self._stall = (self._ticked, now)
            self._ticked = now
            for msg, lease in list(self._inflight.values()):
                if now - lease.last_beat >= every:
                    lease.beat(now)
                    try:
                        await msg.in_progress()
                    except nats.errors.Error as exc:
                        log.warning("in-progress heartbeat failed: %r", exc)

    async def _process(self, msg: Msg, slots: asyncio.Semaphore) -> None:
        try:
            async with slots:
                if self._stopping.is_set():  # came in as the process stopped: not started,
                    await msg.nak()  # so another replica takes it now
                    return
                await self._handle(msg)
        except Exception:  # the loop must survive anything a message does
            log.exception("unexpected failure processing a %s message", self.agent)
        finally:
            self._inflight.pop(id(msg), None)
            self._slot_free.set()
            self.processed += 1

    async def _handle(self, msg: Msg) -> None:
        where = position_of(msg.reply)
        attempt = where.delivered
        headers = msg.headers or {}
        try:
            env = wire.from_message(msg.headers, msg.data, self.bus.settings.max_payload_bytes)
        except EnvelopeInvalid as exc:
            await self._dead_letter(
                msg, attempt, f"undecodable: {exc}", ErrorInfo.from_exception(exc)
            )
            return
        source = self.bus.subjects.source_of(msg.subject)
        # A replay is honoured only on a subject agents cannot publish (no sender token): there
        # the operator's headers name the original sender, kept from the letter.
        replayed = not source and headers.get("Relay-Replay") == "1"
        if replayed:
            source = _name_or_empty(headers.get("Relay-Source", ""))
        delivery = Delivery(
            envelope=env,
            attempt=attempt,
            headers=headers,
            subject=msg.subject,
            sequence=where.sequence,
            stream=where.stream,
            source=source,
            replayed=replayed,
            lease=held[1] if (held := self._inflight.get(id(msg))) else Lease(),
        )
        if attempt > self.max_deliver:
            reason = (
                f"gave up after {self.max_deliver} attempts; the last one did not finish "
                "(worker crashed or exceeded ack wait)"
            )
            await self._dead_letter(msg, attempt - 1, reason, None, delivery)
            return
        try:
            await self.handler(delivery)
        except Abandon:
            return  # neither ack nor nak: another worker owns this message's work now
        except Exception as exc:
            if not delivery.lease.held() and not isinstance(exc, Reject):
                # another replica may run this message now: a nak or a dead letter from here
                # would cut its redelivery short or fail the task it is running; the message
                # comes back after the ack wait (or already has) and is counted there
                log.warning(
                    "attempt %d of a %s message failed after its lease lapsed; the replica "
                    "that takes it over decides: %r",
                    attempt,
                    self.agent,
                    exc,
                )
                return
            await self._failed(msg, delivery, exc)
            return
        await msg.ack()

    async def _failed(self, msg: Msg, delivery: Delivery, exc: Exception) -> None:
        """A failed attempt: retried after a delay, or dead-lettered once attempts run out
        (or at once for a `Reject`)."""
        attempt = delivery.attempt
        if isinstance(exc, Reject):
            await self._dead_letter(
                msg,
                attempt,
                exc.reason,
                ErrorInfo.from_exception(exc),
                delivery,
                announce=not isinstance(exc, Refused),
            )
            return
        if isinstance(exc, Retry):
            reason, info, delay_s = exc.reason, ErrorInfo.from_exception(exc), exc.delay_s
        else:
            info = ErrorInfo.from_exception(exc, with_traceback=True)
            if not isinstance(exc, RelayError):
                log.warning("handler of %s failed (attempt %d): %r", self.agent, attempt, exc)
            reason = f"failed {attempt} times; last error {info.type}: {info.message}"
            delay_s = self.retry.delay_s(attempt)
        if attempt >= self.max_deliver:
            await self._dead_letter(msg, attempt, reason, info, delivery)
        else:
            await msg.nak(delay=delay_s)

    async def _dead_letter(
        self,
        msg: Msg,
        attempts: int,
        reason: str,
        error: ErrorInfo | None,
        delivery: Delivery | None = None,
        *,
        announce: bool = True,
    ) -> None:
        """Store the message in the DLQ (acked by JetStream), then terminate it; with
        `announce`, tell the run it names (a `dead_lettered` event) and `on_dead_letter`."""
        env = delivery.envelope if delivery else None
        record = DeadLetter(
            agent=self.agent,
            subject=msg.subject,
            reason=reason,
            attempts=attempts,
            time=time.time(),
            data=msg.data,
            headers=dict(msg.headers or {}),
            envelope_id=env.id if env else "",
            run_id=env.run_id if env else "",
            last_error=error,
        )
        where = position_of(msg.reply)  # the one parser of a delivery's position on this path
        dedupe = {"Nats-Msg-Id": f"dlq:{where.stream}:{where.sequence}"}
        metrics.DEAD_LETTERS.add(1, {"agent": self.agent})
        # The dead letter stays in its run's trace: a span under the message's producer span.
        with tracing.TRACER.start_as_current_span(
            f"dead_letter {self.agent}",
            context=tracing.run_context(msg.headers, record.run_id, record.envelope_id),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.name": "dead_letter",
                "relaybus.run_id": record.run_id,
                "relaybus.task_id": record.envelope_id,
                "relaybus.delivery_count": attempts,
                "relaybus.reason": reason,
            },
        ) as span:
            span.set_status(Status(StatusCode.ERROR, reason))
            await self.bus.publish_bytes(
                self.bus.subjects.dlq(self.agent), encode_dead(record), dedupe
            )
        log.error("dead-lettered a %s message after %d attempts: %s", self.agent, attempts, reason)
        if env is not None and announce:
            event = Event(
                run_id=env.run_id,
                kind="dead_lettered",
                sender=env.sender,
                recipient=self.agent,
                envelope_id=env.id,
                attempt=attempts,
                detail=reason,
                error=error,
            )
            await self.bus.publish_event(event, durable=True)
            if self.on_dead_letter is not None and delivery is not None:
                try:
                    await self.on_dead_letter(delivery, reason, error)
                except Exception:  # the letter is kept; replaying it finishes the job
                    log.exception("could not fail the dead-lettered %s task", self.agent)
        await msg.term()


def _name_or_empty(value: str) -> str:
    try:
        return check_name("agent", value) if value else ""
    except RelayError:
        return ""


def encode_dead(record: DeadLetter) -> bytes:
    return event_encoder.encode(record)
