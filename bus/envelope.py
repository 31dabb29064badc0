"""The wire envelope every handoff travels in (msgspec, msgpack on the wire).

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
_REQUIRED = ("id", "run_id", "recipient")  # the other names (parent_id, reply_to) may be empty
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode(envelope: Envelope, max_bytes: int | None = None) -> bytes:
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
    env = decode_or_refuse(_decoder, data, EnvelopeInvalid, "not a relaybus envelope")
    for name in ("id", "run_id", "recipient", "parent_id", "reply_to"):
        value = getattr(env, name)
        if not _TOKEN_RE.match(value) and (value or name in _REQUIRED):
            raise EnvelopeInvalid(f"envelope field `{name}` = {value[:80]!r} is not a valid name")
    for name in ("deadline", "created_at"):  # NaN compares false: a deadline that never passes
        if not math.isfinite(getattr(env, name)):
            raise EnvelopeInvalid(f"envelope field `{name}` must be a finite number of seconds")
    return env
