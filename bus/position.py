"""Where a JetStream message stands (its stream, sequence, delivery count, what is left),
read from its ack subject.

nats-py's `Msg.metadata` reads the same subject but also builds a timezone-aware datetime and
two dataclasses: about 20 µs per message, paid for every task an agent takes. This reads
only what the runtime uses, in about 3 µs, from both forms the server sends:

    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>
    $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>[.<token>]
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from nats.errors import NotJSMessageError

_V1_TOKENS = 9  # the form without a domain and an account
_V1_STREAM, _V2_STREAM = 2, 4  # where the stream's token is in each form


class Position(NamedTuple):
    stream: str
    sequence: int  # in the stream
    delivered: int  # how many times this message has been delivered, this one included
    pending: int  # messages after this one the consumer has not delivered yet


def position_of(reply: str | None) -> Position:
    """The position in `reply`, a JetStream message's ack subject; `NotJSMessageError` (as
    nats-py raises) for anything else."""
    if not reply or not reply.startswith("$JS.ACK."):
        raise NotJSMessageError
    tokens = reply.split(".")
    count = len(tokens)
    if count == _V1_TOKENS:
        at = _V1_STREAM
    elif count >= _V1_TOKENS + 2:  # v2: domain and account hash before the stream
        at = _V2_STREAM
    else:
        raise NotJSMessageError
    try:
        # the consumer sequence and the timestamp are not used, but a subject whose numbers are
        # not numbers is refused whole, as nats-py refuses it
        int(tokens[at + 4])
        _timestamp_ok(int(tokens[at + 5]))
        return Position(
            stream=tokens[at],
            sequence=int(tokens[at + 3]),
            delivered=int(tokens[at + 2]),
            pending=int(tokens[at + 6]),
        )
    except (ValueError, IndexError, OverflowError, OSError):
        raise NotJSMessageError from None


def _timestamp_ok(ns: int) -> None:
    # the common case costs a comparison; anything outside 1970 to 2096 is tried the way nats-py
    # converts it, so what it refuses (a year past 9999, say) is refused here too
    if not 0 <= ns < 4 * 10**18:
        datetime.fromtimestamp(ns / 1_000_000_000.0, UTC)
