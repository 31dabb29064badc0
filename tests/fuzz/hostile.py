"""Hostile inputs shared by the fuzz tests: random values of every wire type, deep nesting,
huge numbers, and byte-level mutations of valid messages."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st

from relaybus.bus import Envelope, Link, new_envelope

#: Nesting far past Python's recursion limit, still well under the payload limit.
DEPTH = 5_000
DEEP_JSON = b"[" * DEPTH + b"]" * DEPTH
DEEP_JSON_OBJECT = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
DEEP_MSGPACK = b"\x91" * DEPTH + b"\xc0"  # [[[…[nil]…]]]
#: An array header claiming 2**32-1 elements followed by almost nothing.
HUGE_ARRAY_HEADER = b"\xdd\xff\xff\xff\xff\xc0"
HUGE_MAP_HEADER = b"\xdf\xff\xff\xff\xff\xa1a"
HUGE_STR_HEADER = b"\xdb\xff\xff\xff\xffab"

# In-process property tests are pure CPU; tests that do I/O per example get fewer examples
# and no deadline (a round trip on a busy 2-core machine varies).
PURE = settings(max_examples=300, deadline=None)
IO = settings(max_examples=100, deadline=None)

_names = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    st.binary(max_size=50),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: beyond 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)

#: Any msgpack-encodable value, nested a few levels.
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(_names, inner, max_size=5)
    ),
    max_leaves=20,
)

#: Any JSON value, nested a few levels.
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(_names, inner, max_size=5)
    ),
    max_leaves=20,
)

TOKEN = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
#: Names a NATS subject must never carry: wildcards, dots, whitespace, empty, too long.
bad_names = st.one_of(
    st.sampled_from(["", "*", ">", "a.b", "a b", "a\tb", "a\nb", "echo.>", "x" * 65, "é"]),
    st.text(min_size=1, max_size=70).filter(lambda s: not _is_token(s)),
)


def _is_token(text: str) -> bool:
    return 1 <= len(text) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in text)


@st.composite
def envelopes(draw: st.DrawFn, recipient: str | None = None) -> Envelope:
    """A valid envelope with arbitrary (but well-typed) field values."""
    links = draw(
        st.lists(
            st.builds(Link, payload=st.binary(max_size=64), signature=st.binary(max_size=64)),
            max_size=3,
        )
    )
    return msgspec.structs.replace(
        new_envelope(
            kind=draw(st.sampled_from(["task", "result", "error", "signal"])),
            sender=draw(st.text(max_size=30)),
            recipient=recipient or draw(TOKEN),
            payload=draw(st.binary(max_size=64)),
        ),
        parent_id=draw(st.text(max_size=30)),
        chain=tuple(links),
        hop=draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        max_hops=draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        deadline=draw(st.floats()),
        budget=draw(st.text(max_size=30)),
        created_at=draw(st.floats()),
        reply_to=draw(st.text(max_size=30)),
        steps=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        trail=tuple(draw(st.lists(st.text(max_size=10), max_size=4))),
    )


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with bytes flipped, dropped, inserted, or cut short (never left unchanged)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        action = draw(st.sampled_from(["flip", "set", "drop", "insert", "truncate"]))
        if not out:
            out += draw(st.binary(min_size=1, max_size=4))
            continue
        at = draw(st.integers(min_value=0, max_value=len(out) - 1))
        if action == "flip":
            out[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif action == "set":
            out[at] = draw(st.integers(min_value=0, max_value=255))
        elif action == "drop":
            del out[at : at + draw(st.integers(min_value=1, max_value=8))]
        elif action == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del out[at:]
    if bytes(out) == data:
        out += b"\x00"
    return bytes(out)
