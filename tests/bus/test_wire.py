import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaybus.bus import (
    EnvelopeInvalid,
    EnvelopeTooLarge,
    SubjectInvalid,
    Subjects,
    decode,
    encode,
    new_envelope,
)
from relaybus.bus.subjects import check_subject


def test_envelope_round_trips_with_payload_left_undecoded() -> None:
    env = new_envelope(kind="task", sender="user:dev", recipient="echo", payload=b'{"x": 1}')
    back = decode(encode(env))
    assert back == env
    assert back.payload == b'{"x": 1}'
    assert back.run_id == env.id


def test_decode_error_names_the_field() -> None:
    data = msgspec.msgpack.encode(
        {"id": "A", "run_id": 5, "kind": "task", "sender": "s", "recipient": "r"}
    )
    with pytest.raises(EnvelopeInvalid, match=r"\$\.run_id"):
        decode(data)


def test_unknown_kind_is_refused() -> None:
    data = msgspec.msgpack.encode(
        {"id": "A", "run_id": "R", "kind": "bogus", "sender": "s", "recipient": "r"}
    )
    with pytest.raises(EnvelopeInvalid, match="kind"):
        decode(data)


def test_unsafe_recipient_is_refused_at_decode() -> None:
    data = msgspec.msgpack.encode(
        {"id": "A", "run_id": "R", "kind": "task", "sender": "s", "recipient": "a.>"}
    )
    with pytest.raises(EnvelopeInvalid, match="recipient"):
        decode(data)


def test_oversize_envelope_is_refused_on_encode_and_decode() -> None:
    env = new_envelope(kind="task", sender="s", recipient="r", payload=b"x" * 5000)
    with pytest.raises(EnvelopeTooLarge, match="over the 2048-byte limit"):
        encode(env, max_bytes=2048)
    with pytest.raises(EnvelopeTooLarge):
        decode(encode(env), max_bytes=2048)


@given(st.binary(max_size=512))
def test_garbage_never_crashes_decode(data: bytes) -> None:
    try:
        decode(data)
    except EnvelopeInvalid:
        pass


@pytest.mark.parametrize(
    "subject", ["relay.task.a*", "relay.task.>", "relay..task", "relay.task.a b", "", "relay.task."]
)
def test_unsafe_subjects_are_refused(subject: str) -> None:
    with pytest.raises(SubjectInvalid):
        check_subject(subject)


def test_subject_builders_validate_names() -> None:
    subjects = Subjects("relay")
    assert subjects.task("echo") == "relay.task.echo"
    assert subjects.event("RUN1", "completed") == "relay.event.RUN1.completed"
    for bad in ["a.b", "*", ">", "", "a b"]:
        with pytest.raises(SubjectInvalid):
            subjects.task(bad)
