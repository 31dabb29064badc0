"""JetStream KV with compare-and-set, wrapped so that nothing above `bus` touches nats-py."""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from .client import Bus
from .errors import ConnectionFailed, RelayError, SubjectInvalid
from .replies import Replies

log = logging.getLogger("relaybus.kv")
T = TypeVar("T")
# What a KV call meets while a cluster elects a new stream leader or the client reconnects
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)
RETRY_FOR_S = 20.0
MAX_KEY = 512
_KEY_RE = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")


def check_key(bucket: str, key: str) -> str:
    """Refuse a key the server would not store (nats-py raises its own error type for most,
    and publishes one with an empty token, `a..b`, to a subject no stream takes)."""
    if len(key) > MAX_KEY:  # its subject would end the connection (bus/subjects.py)
        raise SubjectInvalid(
            f"KV {bucket}: key {key[:60]!r}… is {len(key)} characters; at most {MAX_KEY}"
        )
    if not _KEY_RE.match(key):
        raise SubjectInvalid(
            f"KV {bucket}: key {key[:80]!r} is not allowed: use letters, digits, '-', '_', '/', "
            "'=' and '.' between non-empty parts"
        )
    return key


async def _retrying(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, retried on transient errors for up to RETRY_FOR_S, each retry logged.

    The first try runs bare: KV writes sit on the handoff path, and the retry machinery is only
    needed once something went wrong."""
    try:
        return await call()
    except _TRANSIENT as exc:
        log.warning("KV %s failed (%r); retrying", what, exc)
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(_TRANSIENT),
        wait=wait_exponential(multiplier=0.1, max=1.0),
        stop=stop_after_delay(RETRY_FOR_S),
        before_sleep=lambda rs: log.warning(
            "KV %s failed (%r); retrying", what, rs.outcome and rs.outcome.exception()
        ),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await call()
    except _TRANSIENT as exc:
        raise ConnectionFailed(
            f"KV {what}: no answer from JetStream for {RETRY_FOR_S:g}s ({type(exc).__name__})"
        ) from exc
    raise RelayError("unreachable")  # pragma: no cover


EMPTY_LISTING_TRIES = 4
_DELETED = ("DEL", "PURGE")
_OPENED: weakref.WeakKeyDictionary[Any, dict[str, Bucket]] = weakref.WeakKeyDictionary()


class BucketMissing(ConnectionFailed):
    """The KV bucket does not exist (no stack provisioned it yet): not a JetStream that does
    not answer, which is a plain ConnectionFailed."""


class RevisionConflict(RelayError):
    """A compare-and-set write lost: the key changed since it was read (or already exists)."""


class Bucket:
    """One KV bucket. `get` returns (value, revision); writes are conditional on a revision."""

    def __init__(
        self, kv: KeyValue, name: str, replies: Replies | None = None, api_prefix: str = "$JS.API"
    ) -> None:
        self._kv = kv
        self.name = name
        # reads and conditional writes through it (the hot path), else through nats-py's
        self._replies = replies
        self._last_of = f"{api_prefix}.DIRECT.GET.{kv._stream}." if kv._direct else ""

    @classmethod
    async def open(cls, bus: Bus, name: str) -> Bucket:
        """The bucket `name` on `bus`'s connection. Opened once per connection (opening asks
        JetStream for the bucket's stream info: one request per submit, before)."""
        opened = _OPENED.setdefault(bus.js, {})  # per connection: a Bus may connect again
        if (found := opened.get(name)) is not None:
            return found
        try:
            kv = await _retrying(f"open {name}", lambda: bus.js.key_value(name))
        except nats.js.errors.BucketNotFoundError:
            raise BucketMissing(f"KV bucket {name} does not exist; run `relaybus up`") from None
        api_prefix = getattr(bus.js, "_prefix", "$JS.API")
        return opened.setdefault(name, cls(kv, name, bus.replies, api_prefix))

    async def get(self, key: str) -> tuple[bytes, int] | None:
        check_key(self.name, key)
        if self._replies is not None and self._last_of:
            return await _retrying(f"get {self.name}/{key}", lambda: self._read_last(key))
        try:
            entry = await _retrying(f"get {self.name}/{key}", lambda: self._kv.get(key))
        except nats.js.errors.KeyNotFoundError:  # also covers deleted keys
            return None
        if entry.value is None:
            return None
        return bytes(entry.value), int(entry.revision or 0)

    async def _read_last(self, key: str) -> tuple[bytes, int] | None:
        """The key's last entry by a direct get, read as nats-py's `KeyValue.get` reads it
        (a delete or purge marker, or an entry of another subject, is no value)."""
        assert self._replies is not None
        subject = f"{self._kv._pre}{key}"
        msg = await self._replies.request(self._last_of + subject, b"")
        headers = msg.headers or {}
        if (
            not msg.data
        ):  # no such key (404), an error status, or an empty value (none, as in nats-py)
            if headers.get("Status", "404") != "404":
                raise nats.js.errors.APIError.from_msg(msg)
            return None
        if headers.get("Nats-Subject") != subject or headers.get("KV-Operation") in _DELETED:
            return None
        return bytes(msg.data), int(headers.get("Nats-Sequence") or 0)

    async def get_current(self, key: str) -> tuple[bytes, int] | None:
        """`get`, from the server even where a copy could answer (bus/kvview.py)."""
        return await Bucket.get(self, key)

    async def create(self, key: str, value: bytes) -> int:
        """Write only if `key` does not exist; RevisionConflict otherwise."""
        check_key(self.name, key)

        async def create() -> int:
            try:
                return await self._write_at(key, value, 0)
            except nats.js.errors.KeyWrongLastSequenceError:
                # taken, or deleted (a tombstone is the last entry): nats-py recreates the latter
                return int(await self._kv.create(key, value))

        return await self._conditional(
            f"create {self.name}/{key}", create, key, value, f"{self.name}/{key} already exists"
        )

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write only if `key` is still at `revision`; RevisionConflict otherwise."""
        check_key(self.name, key)
        return await self._conditional(
            f"update {self.name}/{key}",
            lambda: self._write_at(key, value, revision),
            key,
            value,
            f"{self.name}/{key} changed since revision {revision}",
        )

    async def _write_at(self, key: str, value: bytes, revision: int) -> int:
        """One write of `key` if its last revision is `revision` (0: it has none), as nats-py's
        `KeyValue.update` makes it, through the connection's cheaper replies (bus/replies.py)."""
        if self._replies is None:
            return int(await self._kv.update(key, value, last=revision))
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(revision)}
        try:
            return await self._replies.publish(f"{self._kv._pre}{key}", value, headers)
        except nats.js.errors.APIError as err:
            if err.err_code in (10071, 10164):  # wrong last (subject) sequence
                raise nats.js.errors.KeyWrongLastSequenceError(
                    description=err.description
                ) from None
            raise

    async def _conditional(
        self, what: str, write: Callable[[], Awaitable[int]], key: str, value: bytes, lost: str
    ) -> int:
        """A compare-and-set write, retried on transient errors. A retry that finds its own
        first attempt stored (the reply was lost, not the write) has succeeded."""
        tries = 0

        async def attempt() -> int:
            nonlocal tries
            tries += 1
            return int(await write())

        try:
            return await _retrying(what, attempt)
        except nats.js.errors.KeyWrongLastSequenceError:
            if tries > 1 and (mine := await self._own_write(key, value)) is not None:
                return mine
            raise RevisionConflict(lost) from None

    async def _own_write(self, key: str, value: bytes) -> int | None:
        current = await self.get(key)
        return current[1] if current is not None and current[0] == value else None

    async def put(self, key: str, value: bytes) -> int:
        check_key(self.name, key)
        return int(await _retrying(f"put {self.name}/{key}", lambda: self._kv.put(key, value)))

    async def delete(self, key: str) -> None:
        check_key(self.name, key)
        await _retrying(f"delete {self.name}/{key}", lambda: self._kv.delete(key))

    async def keys(self) -> list[str]:
        """Every key, listed again while JetStream is slow to answer (a timed-out listing is
        retried, never taken as "no keys": `relaybus runs` lost runs that way under load).

        nats-py's listing also says "no keys" when its watcher's first consumer info comes
        back before the entries already sent to it were handled (a loaded machine: a review
        test lost its verdicts): an empty answer from a bucket that holds messages is asked
        again, a few times, before it is believed."""
        for attempt in range(EMPTY_LISTING_TRIES):
            try:
                return list(await _retrying(f"keys {self.name}", lambda: self._kv.keys()))
            except nats.js.errors.NoKeysError:
                if attempt + 1 == EMPTY_LISTING_TRIES or not (await self.stream_state()).messages:
                    return []
                await asyncio.sleep(0.05 * (attempt + 1))
        return []

    async def stream_state(self) -> Any:
        """The bucket's stream state (nats-py `StreamState`: messages, last_seq, …)."""
        info = await _retrying(
            f"info {self.name}", lambda: self._kv._js.stream_info(self._kv._stream)
        )
        return info.state

    async def watch(self) -> Watch:
        """Every current entry, then live changes: `async for key, value in watch` (value None
        when deleted). `watch.live` turns False when the connection is lost."""
        watcher = await self._kv.watchall()
        return Watch(watcher)


class Watch:
    """nats-py's watch, with a catch-up that can be trusted: nats-py marks "every current
    entry delivered" when its consumer's info says nothing is pending and no message has been
    counted yet, and on a loaded machine that info can arrive before the entries the server had
    already sent (they come after the marker). A cache that believed the marker would answer
    from an empty copy: a revocation list, "nothing revoked". So a marker seen before any entry
    is checked against what the consumer delivered, and until then catch-up waits for the entry
    sent last (the one with nothing pending after it)."""

    def __init__(self, watcher: Any) -> None:
        self._watcher = watcher
        #: every entry the bucket held when the watch began has been returned
        self.caught_up = False
        self.caught_up_event = asyncio.Event()
        #: the stream sequence of the entry returned last (its key's revision)
        self.revision = 0
        self._entries = 0
        self._marker_early = False

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> tuple[str, bytes | None]:
        while True:
            # a plain queue read (its `updates` wraps one in asyncio.wait_for, which on Python
            # 3.11 can swallow a cancellation); `stop()` ends the iteration
            entry = await self._watcher.__anext__()
            if entry is None:  # nats-py: the initial values are done
                if self._entries or await self._nothing_delivered():
                    self._catch_up()
                else:
                    self._marker_early = True
                continue
            self._entries += 1
            if self._marker_early and not self.caught_up and not entry.delta:
                self._catch_up()  # the last entry sent before the marker: applied before the
                # caller's next await, so no reader sees the copy without it
            self.revision = int(entry.revision or 0)
            value = None if entry.operation in ("DEL", "PURGE") else bytes(entry.value or b"")
            return str(entry.key), value

    def _catch_up(self) -> None:
        self.caught_up = True
        self.caught_up_event.set()

    async def _nothing_delivered(self) -> bool:
        """The watch consumer has sent nothing and has nothing pending: the bucket was empty.
        Unanswered, not believed: the watch then catches up with its first entry sent last."""
        try:
            info = await self._watcher._sub.consumer_info()
        except Exception:
            return False
        return not info.num_pending and not info.delivered.consumer_seq

    async def stop(self) -> None:
        await self._watcher.stop()
