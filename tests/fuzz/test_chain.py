"""Fuzzing delegation links: decoding a link body and verifying a chain either succeed or raise
ChainInvalid naming the link, and no mutated, spliced or forged link is ever accepted."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from relaybus.bus import Link
from relaybus.services.identity.chain import (
    CLOCK_SKEW_S,
    DEFAULT_DEPTH,
    ChainVerifier,
    LinkBody,
    child_body,
    decode_body,
    new_nonce,
    sign_body,
    stamp_payload,
)
from relaybus.services.identity.errors import ChainInvalid
from relaybus.services.identity.scopes import Scope, all_narrow, parse_scope

from .hostile import DEEP_MSGPACK, HUGE_ARRAY_HEADER, PURE, msgpack_values, mutations

SERVICE = SigningKey.generate()
AGENTS = {name: SigningKey.generate() for name in ("orchestrator", "research", "writer")}
ATTACKER = SigningKey.generate()
RUN = "01RUN0000000000000000000AA"
LINK_FIELDS = ("payload", "signature", "stamp")


def root(run_id: str = RUN) -> Link:
    now = time.time()
    body = LinkBody(
        run_id=run_id,
        issuer="user:alice",
        subject="orchestrator",
        principal="alice",
        scopes=tuple(parse_scope(s) for s in ("search", "email/send:recipient_domain=t.example")),
        nbf=now,
        exp=now + 600,
        depth=DEFAULT_DEPTH,
        nonce=new_nonce(),
    )
    payload, sig = sign_body(body, SERVICE)
    return Link(payload=payload, signature=sig, stamp=stamp_payload(payload, SERVICE))


def delegate(chain: list[Link], frm: str, to: str, scopes: list[str]) -> list[Link]:
    parent = decode_body(chain[-1].payload)
    body = child_body(
        parent,
        chain[-1].payload,
        issuer_agent=frm,
        subject=to,
        scopes=[parse_scope(s) for s in scopes],
    )
    payload, sig = sign_body(body, AGENTS[frm])
    return [*chain, Link(payload=payload, signature=sig, stamp=stamp_payload(payload, SERVICE))]


def genuine(run_id: str = RUN) -> list[Link]:
    chain = delegate([root(run_id)], "orchestrator", "research", ["search/docs"])
    return delegate(chain, "research", "writer", ["search/docs"])


def verifier() -> ChainVerifier:
    keys = {name: key.verify_key for name, key in AGENTS.items()}
    return ChainVerifier(SERVICE.verify_key, keys.get)


CHAIN = genuine()
OTHER = genuine()  # the same run, signed again: different nonces, so different links
FOREIGN = genuine("01RUN0000000000000000000BB")
WARM = verifier()
WARM.verify(CHAIN, RUN, "writer")  # memoized: a verified link must not vouch for a mutated one


def refused(chain: list[Link], recipient: str = "writer", v: ChainVerifier | None = None) -> str:
    with pytest.raises(ChainInvalid) as caught:
        (v or verifier()).verify(chain, RUN, recipient)
    message = str(caught.value)
    assert message.strip() and "\n" not in message
    return message


def assert_sound(chain: list[Link], recipient: str) -> bool:
    """Verify `chain`; if it is accepted, every rule a delegation must keep does hold."""
    try:
        view = WARM.verify(chain, RUN, recipient)
    except ChainInvalid as exc:
        assert str(exc).strip()
        return False
    now = time.time()
    bodies = view.links
    assert bodies[0].issuer.startswith("user:") and not bodies[0].prev
    assert bodies[-1].subject == recipient
    for index, body in enumerate(bodies):
        assert body.run_id == RUN
        assert body.nbf - CLOCK_SKEW_S <= now <= body.exp + CLOCK_SKEW_S
        if index == 0:
            continue
        parent = bodies[index - 1]
        assert body.prev == hashlib.blake2b(chain[index - 1].payload, digest_size=16).digest()
        assert body.issuer == f"agent:{parent.subject}"
        assert body.principal == parent.principal
        assert body.exp <= parent.exp
        assert body.depth <= parent.depth - 1 and parent.depth >= 1
        assert all_narrow(body.scopes, parent.scopes) is None
    return True


def test_the_genuine_chains_verify() -> None:
    for chain in (CHAIN, OTHER):
        assert [b.subject for b in verifier().verify(chain, RUN, "writer").links] == [
            "orchestrator",
            "research",
            "writer",
        ]


@PURE
@given(st.binary(max_size=2048))
@example(b"")
@example(DEEP_MSGPACK)  # regression: RecursionError escaped decode_body
@example(b"\x81\xa3zzz" + DEEP_MSGPACK)
@example(HUGE_ARRAY_HEADER)
def test_random_link_bodies_decode_or_raise_chain_invalid(data: bytes) -> None:
    try:
        body = decode_body(data)
    except ChainInvalid as exc:
        assert "does not decode" in str(exc)
        return
    assert isinstance(body, LinkBody)


@PURE
@given(st.dictionaries(st.sampled_from(sorted(LinkBody.__struct_fields__)), msgpack_values))
def test_link_bodies_with_wrong_values_name_the_field(override: dict[str, Any]) -> None:
    body = {**msgspec.structs.asdict(decode_body(CHAIN[1].payload)), **override}
    try:
        decode_body(msgspec.msgpack.encode(body))
    except ChainInvalid as exc:
        assert any(f"$.{name}" in str(exc) for name in override), str(exc)


@PURE
@given(st.data(), st.integers(min_value=0, max_value=2), st.sampled_from(LINK_FIELDS))
def test_a_mutated_link_is_never_accepted(data: st.DataObject, index: int, field: str) -> None:
    chain = list(CHAIN)
    original: bytes = getattr(chain[index], field)
    changed = data.draw(mutations(original))
    chain[index] = msgspec.structs.replace(chain[index], **{field: changed})
    message = refused(chain)
    assert f"link {index}" in message or "does not decode" in message or "ends at" in message
    refused(chain, v=WARM)


@PURE
@given(st.lists(st.sampled_from([*CHAIN, *OTHER, *FOREIGN]), max_size=5))
@example([CHAIN[0], CHAIN[1], OTHER[2]])  # spliced from two chains of the same run
@example([CHAIN[0], CHAIN[2]])  # a link dropped
@example([CHAIN[1], CHAIN[2]])  # the root dropped
@example([*CHAIN, CHAIN[2]])  # a link repeated
def test_only_a_whole_genuine_chain_is_accepted(links: list[Link]) -> None:
    if links in (CHAIN, OTHER):
        verifier().verify(links, RUN, "writer")
    else:
        refused(links)


def signed_by(body: LinkBody, key: SigningKey, stamp: bool = True) -> Link:
    payload, sig = sign_body(body, key)
    return Link(
        payload=payload, signature=sig, stamp=stamp_payload(payload, SERVICE) if stamp else b""
    )


scopes = st.lists(
    st.builds(
        Scope,
        path=st.sampled_from(["search", "search/docs", "search/docsx", "email", "email/send", ""]),
        constraints=st.dictionaries(
            st.sampled_from(["recipient_domain", "max_amount", "currency"]),
            st.one_of(
                st.text(max_size=12),
                st.integers(min_value=-(2**63), max_value=2**63 - 1),
                st.lists(st.text(max_size=5)),
            ),
            max_size=2,
        ),
    ),
    max_size=3,
)
floats = st.floats(allow_nan=True, allow_infinity=True)


@settings(PURE, max_examples=150)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "run_id": st.sampled_from([RUN, "01RUN0000000000000000000BB", ""]),
            "issuer": st.sampled_from(["agent:research", "agent:writer", "user:alice", "agent:"]),
            "subject": st.sampled_from(["writer", "research", "mallory", ""]),
            "principal": st.sampled_from(["alice", "mallory", ""]),
            "scopes": scopes.map(tuple),
            "nbf": floats,
            "exp": floats,
            "depth": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "prev": st.binary(max_size=16),
            "v": st.integers(min_value=-5, max_value=5),
        },
    ),
    st.sampled_from(["issuer", "attacker", "unstamped"]),
)
@example({}, "issuer")
@example({"scopes": (Scope(path="search"),)}, "issuer")  # wider than its parent's search/docs
@example({"exp": float("nan")}, "issuer")
@example({"depth": 2**63 - 1}, "issuer")
@example({"prev": b""}, "issuer")
def test_a_hostile_last_link_is_accepted_only_if_it_keeps_every_rule(
    override: dict[str, Any], signer: str
) -> None:
    parent = decode_body(CHAIN[1].payload)
    body = child_body(
        parent, CHAIN[1].payload, issuer_agent="research", subject="writer", scopes=None
    )
    body = msgspec.structs.replace(body, **override)
    name = body.issuer.removeprefix("agent:")
    key = AGENTS.get(name, ATTACKER) if signer != "attacker" else ATTACKER
    link = signed_by(body, key, stamp=signer != "unstamped")
    chain = [*CHAIN[:2], link]
    if signer != "issuer":
        refused(chain, recipient=body.subject)
        return
    accepted = assert_sound(chain, recipient=body.subject or "writer")
    if not override:
        assert accepted, "the untouched delegation must verify"


def test_names_from_a_forged_link_are_shown_on_one_line() -> None:
    body = decode_body(CHAIN[0].payload)
    forged = msgspec.structs.replace(body, subject="\nrchestrator", issuer="user:al\x1bice")
    payload = msgspec.msgpack.encode(forged)
    link = Link(payload=payload, signature=CHAIN[0].signature, stamp=CHAIN[0].stamp)
    message = refused([link, *CHAIN[1:]])
    assert "'\\nrchestrator'" in message and "\\x1b" in message
