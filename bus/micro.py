"""A service's request subjects as a NATS micro service, discoverable with `$SRV.PING`,
`$SRV.INFO` and `$SRV.STATS` (`nats micro ls`).

One endpoint per operation, on the subject and queue group clients already use, answered by
the same `async (subject, data) -> bytes` handler as `Bus.serve`: replies are the bytes the
handler returns, with no headers added, and a handler that raises is logged and answered with
nothing (the caller times out rather than trusting a half-done reply). Each endpoint carries its
request and response JSON schemas in its metadata (`request_schema`, `response_schema`: micro v1
has no schema field of its own).

Requests are answered one at a time, in arrival order, across all endpoints, as one subscription
answered them before. A request on a subject no endpoint names (`…ledger.steal`) goes to the
`unmatched` handler, so it still gets its refusal instead of no reply at all.

STATS per endpoint: nats' request count and timing; `data.refusals` counts the replies that were
refusals (`ok: false`), `data.unanswered` the requests whose handler raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import msgspec
import nats.errors
import nats.micro
from nats.aio.msg import Msg
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, EndpointStats, Service, ServiceConfig
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import tracing
from .client import Bus
from .errors import ErrorInfo
from .rpc import is_refusal

log = logging.getLogger("relaybus.micro")

Handler = Callable[[str, bytes], Awaitable[bytes]]
ANY_JSON: dict[str, Any] = {}  # the JSON schema every value satisfies


def relaybus_version() -> str:
    """The installed relaybus distribution's version (a micro service's version is semver)."""
    try:
        return importlib.metadata.version("relaybus")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def json_schema(request_type: Any) -> dict[str, Any]:
    """`request_type`'s JSON schema (msgspec), or any JSON for None (a body that is ignored)."""
    return ANY_JSON if request_type is None else msgspec.json.schema(request_type)


def reply_schema(body_type: Any = Any) -> dict[str, Any]:
    """The schema of every service reply (`relaybus.bus.rpc.Reply`), its body as `body_type`."""
    reply = msgspec.defstruct(
        "Reply",
        [("ok", bool), ("error", ErrorInfo | None, None), ("body", body_type, None)],
        kw_only=True,
        omit_defaults=True,
    )
    return msgspec.json.schema(reply)


@dataclass(frozen=True)
class Endpoint:
    """One operation: its micro name, its full subject (wildcards allowed), and its schemas."""

    name: str
    subject: str
    handler: Handler
    request_schema: dict[str, Any] = field(default_factory=dict)
    response_schema: dict[str, Any] = field(default_factory=reply_schema)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def micro_metadata(self) -> dict[str, str]:
        return {
            **self.metadata,
            "format": "application/json",
            "request_schema": msgspec.json.encode(self.request_schema).decode(),
            "response_schema": msgspec.json.encode(self.response_schema).decode(),
        }


@dataclass
class _Counts:
    refusals: int = 0
    unanswered: int = 0


class MicroService:
    """`async with MicroService(bus, name=…, …) as service:` answers on every endpoint and the
    `$SRV` subjects until the block ends; then it finishes the requests in hand (bounded by the
    request timeout, as long as any caller waits) and stops listening.

    `concurrency`: how many requests are handled at once (1: one after another). A handler
    that waits on I/O for each request (the ledger's journal append) takes more, so what
    arrives meanwhile is decided with it; the next request is read only once a slot is free."""

    def __init__(
        self,
        bus: Bus,
        *,
        name: str,
        description: str,
        endpoints: Sequence[Endpoint],
        queue: str,
        unmatched: tuple[str, Handler] | None = None,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        concurrency: int = 1,
    ) -> None:
        self.bus = bus
        self.concurrency = concurrency
        self.config = ServiceConfig(
            name=name,
            version=version or relaybus_version(),
            description=description,
            metadata={"prefix": bus.subjects.prefix, **(metadata or {})},
            stats_handler=self._stats_data,
        )
        self.endpoints = list(endpoints)
        self.queue = queue
        self.unmatched = unmatched
        self._counts = {e.name: _Counts() for e in self.endpoints}
        self._turn = asyncio.Semaphore(concurrency)
        self._in_hand: set[asyncio.Task[None]] = set()
        self._service: Service | None = None
        self._unmatched_sub: Any = None

    @property
    def id(self) -> str:
        """This instance's micro id (`$SRV.INFO.<name>.<id>`)."""
        if self._service is None:
            raise RuntimeError("the micro service is not started")
        return self._service.id

    async def __aenter__(self) -> MicroService:
        if self._service is not None:
            raise RuntimeError(f"micro service {self.config.name} is already started")
        self._service = await nats.micro.add_service(self.bus.nc, self.config)
        try:
            for endpoint in self.endpoints:
                await self._service.add_endpoint(
                    EndpointConfig(
                        name=endpoint.name,
                        subject=endpoint.subject,
                        queue_group=self.queue,
                        handler=self._answering(endpoint),
                        metadata=endpoint.micro_metadata(),
                    )
                )
            if self.unmatched is not None:
                self._unmatched_sub = await self.bus.nc.subscribe(
                    self.unmatched[0], queue=f"{self.queue}-unmatched", cb=self._on_unmatched
                )
            await self.bus.nc.flush(timeout=math.ceil(self.bus.settings.request_timeout_s))
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.bus.settings.request_timeout_s):
                for _ in range(self.concurrency):  # the requests in hand are answered first
                    await self._turn.acquire()
        with contextlib.suppress(nats.errors.Error):
            if self._unmatched_sub is not None:
                await self._unmatched_sub.unsubscribe()
            if self._service is not None:
                await self._service.stop()
        self._unmatched_sub = None

    def _answering(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[None]]:
        counts = self._counts[endpoint.name]

        async def on_request(request: Request) -> None:
            if self.concurrency == 1:
                async with self._turn:
                    await answer(request)
                return
            await self._turn.acquire()  # the next request is read once a slot is free
            task = asyncio.create_task(answer(request))
            self._in_hand.add(task)
            task.add_done_callback(self._done)

        async def answer(request: Request) -> None:
            try:
                await answer_in_turn(request)
            finally:
                if self.concurrency > 1:
                    self._turn.release()

        async def answer_in_turn(request: Request) -> None:
            with _server_span(self.config.name, endpoint.name, request.headers) as span:
                reply = await self._answer(endpoint.handler, request.subject, bytes(request.data))
                if reply is not None and is_refusal(reply):
                    span.set_status(Status(StatusCode.ERROR, _refusal_text(reply)))
            if reply is None:
                counts.unanswered += 1
                return
            if is_refusal(reply):
                counts.refusals += 1
            with contextlib.suppress(ValueError):  # no reply subject: a publish, not a request
                await request.respond(reply)

        return on_request

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_hand.discard(task)

    async def _on_unmatched(self, msg: Msg) -> None:
        if any(_matches(e.subject, msg.subject) for e in self.endpoints) or self.unmatched is None:
            return  # an endpoint answers it
        async with self._turn:
            reply = await self._answer(self.unmatched[1], msg.subject, bytes(msg.data))
        if reply is not None and msg.reply:
            await self.bus.nc.publish(msg.reply, reply)

    async def _answer(self, handler: Handler, subject: str, data: bytes) -> bytes | None:
        try:
            return await handler(subject, data)
        except Exception:
            log.exception("request handler for %s failed", subject)
            return None

    def _stats_data(self, stats: EndpointStats) -> dict[str, int]:
        counts = self._counts.get(stats.name, _Counts())
        return {"refusals": counts.refusals, "unanswered": counts.unanswered}


@contextlib.contextmanager
def _server_span(service: str, method: str, headers: Mapping[str, str] | None) -> Iterator[Any]:
    """A SERVER span for a request that belongs to a trace (a run's ledger hold, memory recall,
    identity stamp); untraced requests (pings, CLI queries) make no span of their own."""
    parent = tracing.extract(headers)
    if not trace.get_current_span(parent).get_span_context().is_valid:
        yield trace.INVALID_SPAN
        return
    with tracing.TRACER.start_as_current_span(
        f"{service} {method}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "nats", "rpc.service": service, "rpc.method": method},
    ) as span:
        yield span


def _refusal_text(reply: bytes) -> str:
    try:
        error = msgspec.json.decode(reply, type=dict).get("error") or {}
        return f"{error.get('type', 'refused')}: {error.get('message', '')}"[:500]
    except msgspec.DecodeError:
        return "refused"


def _matches(pattern: str, subject: str) -> bool:
    """Whether NATS would deliver `subject` to a subscription on `pattern` (`*`, `>`)."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)
