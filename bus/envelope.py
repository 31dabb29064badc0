"""The envelope every handoff travels in, and its NATS-native wire form.

On the wire (`to_message` / `from_message`) the message body is the task's JSON payload, as
any NATS client writes it, and every other field travels in a `Relay-*` header (docs/wire.md
names them all). In a journal the envelope is stored whole as msgpack (`encode` / `decode`).

Schema evolution: new fields get defaults; a field's type never changes.
The payload stays JSON bytes, undecoded, so routing code never needs body types.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import time
from typing import Literal

import msgspec

from .codec import decode_or_refuse
from .errors import EnvelopeInvalid, EnvelopeTooLarge
from .ids import _TO_CROCKFORD, new_id

Kind = Literal["task", "result", "error", "signal"]


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """One delegation link as carried on the wire. The bus does not interpret it: `payload`
    is the signed link body (see services.identity.chain), `signature` is the delegator's,
    `stamp` the identity service's countersignature."""

    payload: bytes
    signature: bytes
    stamp: bytes = b""


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A task, result, error or signal moving between agents.

    `parent_id`/`reply_to`: the task (and its agent) waiting for this one's result; empty
    for the run's own line, whose final result completes the run. `trail`: the last agents
    of the line, for loop detection. `steps`: journaled steps the line has used so far.
    `user`: who the run acts for, carried from its first task to every task of the run, so
    that a child's spend counts against its user's budget when there is no delegation chain
    (identity off); with a chain, its verified root is the user and this field is ignored.
    """

    id: str
    run_id: str
    kind: Kind
    sender: str
    recipient: str
    payload: bytes = b"null"
    parent_id: str = ""
    chain: tuple[Link, ...] = ()
    hop: int = 0
    max_hops: int = 32
    deadline: float = 0.0
    budget: str = ""
    created_at: float = 0.0
    reply_to: str = ""
    steps: int = 0
    max_steps: int = 0
    trail: tuple[str, ...] = ()
    user: str = ""


def derived_id(*parts: str) -> str:
    """A deterministic id (26 chars, ULID alphabet) for something derived from `parts`:
    a child task, a handoff, a result. Replays derive the same id, so JetStream dedupes."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).digest()
    return base64.b32encode(digest + b"\0")[:26].translate(_TO_CROCKFORD).decode()


def new_envelope(
    *,
    kind: Kind,
    sender: str,
    recipient: str,
    payload: bytes,
    run_id: str | None = None,
    **fields: object,
) -> Envelope:
    """An envelope with a fresh id (and a fresh run id unless one is given)."""
    env_id = new_id()
    return Envelope(
        id=env_id,
        run_id=run_id or env_id,
        kind=kind,
        sender=sender,
        recipient=recipient,
        payload=payload,
        created_at=time.time(),
        **fields,  # type: ignore[arg-type]
    )


_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KINDS = frozenset(("task", "result", "error", "signal"))
_REQUIRED = ("id", "run_id", "recipient")  # the other names (parent_id, reply_to) may be empty
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode(envelope: Envelope, max_bytes: int | None = None) -> bytes:
    """The whole envelope as msgpack: how a journal stores the task it ran."""
    data = _encoder.encode(envelope)
    if max_bytes is not None and len(data) > max_bytes:
        raise EnvelopeTooLarge(
            f"envelope {envelope.id} is {len(data)} bytes, over the {max_bytes}-byte limit "
            "(RELAYBUS_MAX_PAYLOAD_BYTES); store large data in memory and pass a reference"
        )
    return data


def decode(data: bytes, max_bytes: int | None = None) -> Envelope:
    if max_bytes is not None and len(data) > max_bytes:
        raise EnvelopeTooLarge(f"message is {len(data)} bytes, over the {max_bytes}-byte limit")
    return _checked(decode_or_refuse(_decoder, data, EnvelopeInvalid, "not a relaybus envelope"))


def _checked(env: Envelope) -> Envelope:
    for name in ("id", "run_id", "recipient", "parent_id", "reply_to"):
        value = getattr(env, name)
        if not _TOKEN_RE.match(value) and (value or name in _REQUIRED):
            raise EnvelopeInvalid(f"envelope field `{name}` = {value[:80]!r} is not a valid name")
    if len(env.user) > 128:
        raise EnvelopeInvalid("envelope field `user` is longer than 128 characters")
    for name in ("deadline", "created_at"):  # NaN compares false: a deadline that never passes
        if not math.isfinite(getattr(env, name)):
            raise EnvelopeInvalid(f"envelope field `{name}` must be a finite number of seconds")
    return env


# -- the NATS-native wire: JSON body, facts in headers ----------------------------------------

_STR_HEADERS = (
    ("id", "Relay-Id"),
    ("run_id", "Relay-Run"),
    ("kind", "Relay-Kind"),
    ("sender", "Relay-From"),
    ("recipient", "Relay-To"),
    ("parent_id", "Relay-Parent"),
    ("reply_to", "Relay-Reply-To"),
    ("budget", "Relay-Budget"),
    ("user", "Relay-User"),
)
_INT_HEADERS = (
    ("hop", "Relay-Hop"),
    ("max_hops", "Relay-Max-Hops"),
    ("steps", "Relay-Steps"),
    ("max_steps", "Relay-Max-Steps"),
)
_FLOAT_HEADERS = (("deadline", "Relay-Deadline"), ("created_at", "Relay-Created"))
_DEFAULTS = {f.name: f.default for f in msgspec.structs.fields(Envelope)}
_chain_encoder = msgspec.json.Encoder()
_chain_decoder = msgspec.json.Decoder(tuple[Link, ...])
_HEADER_BAD = re.compile(r"[\x00-\x1f\x7f]")


def to_message(envelope: Envelope, max_bytes: int | None = None) -> tuple[dict[str, str], bytes]:
    """`(headers, body)`: the body is the payload's JSON; each field that is not its default
    travels in its `Relay-*` header (the chain as a JSON list of base64 links)."""
    headers: dict[str, str] = {}
    for name, header in _STR_HEADERS:
        value = getattr(envelope, name)
        if value:
            headers[header] = value
    for name, header in (*_INT_HEADERS, *_FLOAT_HEADERS):
        value = getattr(envelope, name)
        if value != _DEFAULTS[name]:
            headers[header] = repr(value)
    if envelope.trail:
        headers["Relay-Trail"] = ",".join(envelope.trail)
    if envelope.chain:
        headers["Relay-Chain"] = _chain_encoder.encode(envelope.chain).decode()
    if max_bytes is not None:
        size = len(envelope.payload) + sum(len(k) + len(v) + 4 for k, v in headers.items())
        if size > max_bytes:
            raise EnvelopeTooLarge(
                f"envelope {envelope.id} is {size} bytes, over the {max_bytes}-byte limit "
                "(RELAYBUS_MAX_PAYLOAD_BYTES); store large data in memory and pass a reference"
            )
    return headers, envelope.payload


def from_message(
    headers: dict[str, str] | None, body: bytes, max_bytes: int | None = None
) -> Envelope:
    """The envelope a message carries, checked: names, numbers and the chain must be what
    their header says, or EnvelopeInvalid names the header."""
    headers = headers or {}
    if max_bytes is not None and len(body) > max_bytes:
        raise EnvelopeTooLarge(f"message is {len(body)} bytes, over the {max_bytes}-byte limit")
    if "Relay-Id" not in headers:
        raise EnvelopeInvalid(
            "not a relaybus task: it has no Relay-Id header; a plain NATS client publishes a "
            "new task to `<prefix>.task.<agent>` (see docs/wire.md), where the ingress admits it"
        )
    fields: dict[str, object] = {"payload": bytes(body) or b"null"}
    for name, header in _STR_HEADERS:
        value = headers.get(header, "")
        if _HEADER_BAD.search(value):
            raise EnvelopeInvalid(f"header {header} holds a control character")
        fields[name] = value
    if fields["kind"] not in _KINDS:
        raise EnvelopeInvalid(
            f"header Relay-Kind = {str(fields['kind'])[:40]!r} is not one of {sorted(_KINDS)}"
        )
    for name, header in _INT_HEADERS:
        if header in headers:
            fields[name] = _number(header, headers[header], int)
    for name, header in _FLOAT_HEADERS:
        if header in headers:
            fields[name] = _number(header, headers[header], float)
    if trail := headers.get("Relay-Trail"):
        fields["trail"] = tuple(trail.split(","))
    if chain := headers.get("Relay-Chain"):
        fields["chain"] = decode_or_refuse(
            _chain_decoder, chain.encode(), EnvelopeInvalid, "header Relay-Chain is not a chain"
        )
    try:
        env = Envelope(**fields)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise EnvelopeInvalid(f"not a relaybus task: {exc}") from None
    return _checked(env)


def _number(header: str, text: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(text)
        if len(text) > 32 or (kind is int and value < 0):
            raise ValueError
        return value
    except ValueError:
        raise EnvelopeInvalid(
            f"header {header} = {text[:40]!r} is not {'a non-negative integer' if kind is int else 'a number'}"
        ) from None
