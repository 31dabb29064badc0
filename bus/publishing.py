"""Stream publishes awaited to their acknowledgement: retried on transient errors under the
same message id (so JetStream stores them once), refusals in words, and the message ids keyed
with the connection's own NATS secret."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from .errors import PublishFailed, RelayError
from .replies import Replies

log = logging.getLogger("relaybus.bus")
# what a publish meets while a cluster elects a stream leader or the client reconnects
TRANSIENT = (
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionReconnectingError,
    asyncio.TimeoutError,
)


async def publish_acked(
    replies: Replies,
    subject: str,
    data: bytes,
    headers: dict[str, str] | None,
    *,
    retry_for_s: float,
    raise_refused: Callable[[str], None],
) -> int:
    """Publish and await the stream's acknowledgement; returns the stream sequence. A
    transient failure is retried (with backoff, for up to `retry_for_s`) with the same headers
    and so the same message id; `raise_refused(subject)` raises if NATS refused the subject to
    this connection (a permission error is not retried)."""
    try:
        return await replies.publish(subject, data, dict(headers or {}))
    except TRANSIENT:
        raise_refused(subject)
    except nats.js.errors.APIError as exc:
        raise PublishFailed(f"JetStream refused {subject!r}: {exc.description}") from exc
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        stop=stop_after_delay(retry_for_s),
        before_sleep=lambda rs: log.warning(
            "publish to %s failed (%s); retrying", subject, rs.outcome and rs.outcome.exception()
        ),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await replies.publish(subject, data, dict(headers or {}))
    except TRANSIENT as exc:
        raise_refused(subject)
        raise PublishFailed(
            f"no JetStream acknowledgement for {subject!r} ({type(exc).__name__}); "
            "is a stream bound to this subject (`relaybus up` provisions them)?"
        ) from exc
    except nats.js.errors.APIError as exc:
        raise PublishFailed(f"JetStream refused {subject!r}: {exc.description}") from exc
    raise RelayError("unreachable")  # pragma: no cover


def message_id_key(url: str, connect_options: dict[str, Any]) -> bytes:
    """The secret behind `Bus.message_id`: what only this connection's NATS user knows (an
    nkey seed, or the URL's password); empty without authentication."""
    secret = b""
    if connect_options.get("nkeys_seed"):
        with contextlib.suppress(OSError):  # unreadable: connecting reports it
            secret = Path(connect_options["nkeys_seed"]).read_bytes().strip()
    elif connect_options.get("nkeys_seed_str"):
        secret = str(connect_options["nkeys_seed_str"]).encode()
    else:
        secret = (urlsplit(url.split(",")[0].strip()).password or "").encode()
    return hashlib.blake2b(secret, digest_size=32).digest() if secret else b""


def keyed_message_id(key: bytes, dedupe_key: str) -> str:
    """`dedupe_key` as stored under `key` (itself without a key)."""
    if not key:
        return dedupe_key
    return hashlib.blake2b(dedupe_key.encode(), key=key, digest_size=20).hexdigest()
