"""Fuzzing the wire envelope decoder: whatever arrives on a task subject, `relaybus.bus.decode` returns
an Envelope whose routing fields are safe subject tokens, or raises EnvelopeInvalid saying
what was wrong — never any other exception."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from relaybus.bus import Envelope, EnvelopeInvalid, EnvelopeTooLarge, Subjects, decode, encode
from relaybus.bus.subjects import check_subject

from .hostile import (
    DEEP_MSGPACK,
    HUGE_ARRAY_HEADER,
    HUGE_MAP_HEADER,
    HUGE_STR_HEADER,
    PURE,
    envelopes,
    msgpack_values,
    mutations,
)

FIELDS = {f.name: f for f in msgspec.structs.fields(Envelope)}
ROUTING = ("id", "run_id", "recipient")
SUBJECTS = Subjects("relay")


def decoded_or_refused(data: bytes, max_bytes: int | None = None) -> Envelope | EnvelopeInvalid:
    """The decoder's answer; any exception other than EnvelopeInvalid fails the test."""
    try:
        env = decode(data, max_bytes)
    except EnvelopeInvalid as exc:
        assert str(exc).strip(), "a refusal must say what was wrong"
        assert "\n" not in str(exc)[:200]
        return exc
    assert isinstance(env, Envelope)
    for name in ROUTING:  # whatever decodes can be routed without subject injection
        check_subject(SUBJECTS.task(getattr(env, name)))
    for name in ("parent_id", "reply_to"):  # optional names, but names (KV keys, subjects)
        if getattr(env, name):
            check_subject(SUBJECTS.task(getattr(env, name)))
    assert decode(encode(env)) == env
    return env


def good() -> dict[str, Any]:
    return {"id": "A1", "run_id": "R1", "kind": "task", "sender": "s", "recipient": "echo"}


def packed(body: Any) -> bytes:
    return msgspec.msgpack.encode(body)


@PURE
@given(st.binary(max_size=4096))
@example(b"")
@example(b"\xc1")
@example(DEEP_MSGPACK)
@example(HUGE_ARRAY_HEADER)
@example(HUGE_MAP_HEADER)
@example(HUGE_STR_HEADER)
# regression: an unknown field nested past the recursion limit raised RecursionError
@example(b"\x81\xa3zzz" + DEEP_MSGPACK)
def test_random_bytes_decode_or_are_refused(data: bytes) -> None:
    decoded_or_refused(data)


@PURE
@given(st.data())
def test_mutated_valid_envelopes_decode_or_are_refused(data: st.DataObject) -> None:
    original = encode(data.draw(envelopes()))
    decoded_or_refused(data.draw(mutations(original)))


@PURE
@given(st.sampled_from(sorted(FIELDS)), msgpack_values)
@example("run_id", 7)
@example("kind", "bogus")
@example("recipient", "a.>")
@example("recipient", "echo *")
@example("reply_to", "a.>")  # regression: accepted, then retried as a crash at delivery
@example("parent_id", "x.*")  # regression: a journal key with a wildcard
@example("parent_id", "")
@example("id", "")
@example("hop", 2**64 - 1)
@example("deadline", float("nan"))  # regression: a deadline that never passes
@example("created_at", float("inf"))
@example("chain", [{"payload": "not bytes", "signature": b""}])
@example("trail", {"a": 1})
def test_a_wrong_value_in_any_field_is_refused_naming_that_field(name: str, value: Any) -> None:
    body = {**good(), name: value}
    outcome = decoded_or_refused(packed(body))
    if isinstance(outcome, EnvelopeInvalid):
        assert f"$.{name}" in str(outcome) or f"`{name}`" in str(outcome), str(outcome)
    else:
        expected = msgspec.convert(value, FIELDS[name].type, strict=False)
        assert getattr(outcome, name) == expected


@PURE
@given(st.sampled_from(sorted({"id", "run_id", "kind", "sender", "recipient"})))
def test_a_missing_required_field_is_refused_naming_it(name: str) -> None:
    body = good()
    del body[name]
    with pytest.raises(EnvelopeInvalid, match=f"`{name}`"):
        decode(packed(body))


@PURE
@given(st.dictionaries(st.text(max_size=10), msgpack_values, max_size=6))
def test_unknown_fields_of_any_shape_are_ignored_or_refused(extra: dict[str, Any]) -> None:
    body = {**{k: v for k, v in extra.items() if k not in FIELDS}, **good()}
    outcome = decoded_or_refused(packed(body))
    assert isinstance(outcome, Envelope), outcome


@pytest.mark.parametrize(
    "value",
    [
        DEEP_MSGPACK,  # raw: spliced in below as an already-encoded value
        b"\xdc\xff\xff" + b"\xc0" * 10,  # array16 claiming 65535 items, 10 present
        b"\xdb" + (50_000).to_bytes(4, "big") + b"x" * 50_000,  # a 50 kB string
    ],
    ids=["nested-past-recursion-limit", "short-array", "huge-string"],
)
@pytest.mark.parametrize("field", ["payload", "zzz_unknown", "chain", "trail", "sender"])
def test_huge_and_deeply_nested_values_in_any_field(field: str, value: bytes) -> None:
    body = packed({k: v for k, v in good().items() if k != field})
    count = len(msgspec.msgpack.decode(body)) + 1
    data = bytes([0x80 | count]) + body[1:] + packed(field) + value
    outcome = decoded_or_refused(data)
    if value.startswith(b"\xdb") and field in ("sender", "zzz_unknown"):
        assert isinstance(outcome, Envelope)  # a big string is still a string
    else:
        assert isinstance(outcome, EnvelopeInvalid)


@PURE
@given(st.binary(min_size=1, max_size=3000), st.integers(min_value=0, max_value=2999))
def test_anything_over_the_size_limit_is_refused_before_decoding(data: bytes, limit: int) -> None:
    if len(data) > limit:
        with pytest.raises(EnvelopeTooLarge, match=f"over the {limit}-byte limit"):
            decode(data, limit)
    else:
        decoded_or_refused(data, limit)
