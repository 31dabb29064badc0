"""Request/reply with services: one reply shape, and errors that come back as their own types."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from .client import Bus
from .errors import ConnectionFailed, ErrorInfo, RelayError, ServiceUnavailable, rebuild_error

log = logging.getLogger("relaybus.rpc")
T = TypeVar("T")


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    error: ErrorInfo | None = None
    body: msgspec.Raw = msgspec.Raw(b"null")


def reply_ok(body: Any = None) -> bytes:
    return msgspec.json.encode(Reply(ok=True, body=msgspec.Raw(msgspec.json.encode(body))))


def reply_error(exc: BaseException) -> bytes:
    return msgspec.json.encode(Reply(ok=False, error=ErrorInfo.from_exception(exc)))


def is_refusal(reply: bytes) -> bool:
    """Whether `reply` (from `answer`) is a refusal: its encoding starts with `ok`."""
    return reply.startswith(b'{"ok":false')


async def answer(
    work: Callable[[], Awaitable[Any]], service: str, refusal: type[RelayError]
) -> bytes:
    """One service request, answered: `work()`'s result as an ok reply; a refusal (any
    RelayError) as an error reply of its own type; a body that does not decode, does not fit
    the request type, or nests too deeply as `refusal` naming what was wrong. Every service's
    request loop (identity, runs, ledger, memory) answers through here."""
    try:
        return reply_ok(await work())
    except msgspec.DecodeError as exc:  # ValidationError is one too
        return reply_error(refusal(f"bad {service} request: {exc}"))
    except RecursionError:  # msgspec recurses even into fields it skips
        return reply_error(refusal(f"bad {service} request: values nested too deeply"))
    except RelayError as exc:
        return reply_error(exc)


async def call(
    bus: Bus,
    subject: str,
    body: Any,
    timeout_s: float | None = None,
    *,
    idempotent: bool = False,
) -> Any:
    """Send `body` (JSON), return the reply's body; a refusal raises its own error type.

    While no service process answers (one restarting after a crash), the request is sent again
    for up to twice the request timeout: nobody received it, so resending is always safe.
    `idempotent`: a request that got no reply in time is sent again too (to another replica
    of the service, when the one that took it died), within the same bound: only for requests
    that may be applied twice (signing, reading, setting a state)."""
    data = await _request(bus, subject, msgspec.json.encode(body), timeout_s, idempotent)
    reply = msgspec.json.decode(data, type=Reply)
    if not reply.ok:
        info = reply.error or ErrorInfo(type="RelayError", message="the service refused")
        raise rebuild_error(info)
    return msgspec.json.decode(reply.body)


async def call_as(
    bus: Bus,
    subject: str,
    body: Any,
    into: type[T],
    timeout_s: float | None = None,
    *,
    idempotent: bool = False,
) -> T:
    """`call`, with the reply's body decoded straight into `into` (a msgspec type)."""
    data = await _request(bus, subject, msgspec.json.encode(body), timeout_s, idempotent)
    reply = msgspec.json.decode(data, type=Reply)
    if not reply.ok:
        info = reply.error or ErrorInfo(type="RelayError", message="the service refused")
        raise rebuild_error(info)
    return msgspec.json.decode(reply.body, type=into)


async def _request(
    bus: Bus, subject: str, data: bytes, timeout_s: float | None, idempotent: bool
) -> bytes:
    unanswered = ConnectionFailed if idempotent else ServiceUnavailable
    try:  # the first try bare: requests sit on the hot path, retries only once one failed
        return await bus.request(subject, data, timeout_s)
    except unanswered:
        log.warning("no service answers on %s yet; retrying", subject)
    per_try = timeout_s or bus.settings.request_timeout_s
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(unanswered),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        stop=stop_after_delay(2 * per_try),
        before_sleep=lambda rs: log.warning("no service answers on %s yet; retrying", subject),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await bus.request(subject, data, timeout_s)
    raise RelayError("unreachable")  # pragma: no cover
