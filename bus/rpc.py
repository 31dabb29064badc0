"""Request/reply with services: one reply shape, and errors that come back as their own types."""

from __future__ import annotations

from typing import Any

import msgspec

from . import errors
from .client import Bus
from .errors import ErrorInfo, RelayError


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    error: ErrorInfo | None = None
    body: msgspec.Raw = msgspec.Raw(b"null")


def reply_ok(body: Any = None) -> bytes:
    return msgspec.json.encode(Reply(ok=True, body=msgspec.Raw(msgspec.json.encode(body))))


def reply_error(exc: BaseException) -> bytes:
    return msgspec.json.encode(Reply(ok=False, error=ErrorInfo.from_exception(exc)))


def _error_class(name: str) -> type[RelayError]:
    found = getattr(errors, name, None)
    if isinstance(found, type) and issubclass(found, RelayError):
        return found
    return RelayError


async def call(bus: Bus, subject: str, body: Any, timeout_s: float | None = None) -> Any:
    """Send `body` (JSON), return the reply's body; a refusal raises its own error type."""
    data = await bus.request(subject, msgspec.json.encode(body), timeout_s)
    reply = msgspec.json.decode(data, type=Reply)
    if not reply.ok:
        info = reply.error or ErrorInfo(type="RelayError", message="the service refused")
        raise _error_class(info.type)(info.message)
    return msgspec.json.decode(reply.body)
