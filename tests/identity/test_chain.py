"""Adversarial chain verification: every case asserts the refusal and its reason."""

from __future__ import annotations

import time

import msgspec
import pytest
from nacl.signing import SigningKey

from relaybus.bus import Link
from relaybus.services.identity.chain import (
    DEFAULT_DEPTH,
    ChainVerifier,
    LinkBody,
    child_body,
    new_nonce,
    sign_body,
    stamp_payload,
)
from relaybus.services.identity.errors import ChainInvalid
from relaybus.services.identity.scopes import parse_scope

SERVICE = SigningKey.generate()
AGENTS = {name: SigningKey.generate() for name in ("orchestrator", "research", "writer")}
RUN = "01RUN0000000000000000000AA"


def root(
    scopes: list[str], run_id: str = RUN, subject: str = "orchestrator", **over: object
) -> Link:
    now = time.time()
    body = LinkBody(
        run_id=run_id,
        issuer="user:alice",
        subject=subject,
        principal="alice",
        scopes=tuple(parse_scope(s) for s in scopes),
        nbf=now,
        exp=now + 600,
        depth=DEFAULT_DEPTH,
        nonce=new_nonce(),
    )
    body = msgspec.structs.replace(body, **over)
    payload, sig = sign_body(body, SERVICE)
    return Link(payload=payload, signature=sig, stamp=stamp_payload(payload, SERVICE))


def delegate(
    chain: list[Link],
    frm: str,
    to: str,
    scopes: list[str] | None,
    key: SigningKey | None = None,
    stamp: bool = True,
    **over: object,
) -> list[Link]:
    parent = msgspec.msgpack.decode(chain[-1].payload, type=LinkBody)
    body = child_body(
        parent,
        chain[-1].payload,
        issuer_agent=frm,
        subject=to,
        scopes=[parse_scope(s) for s in scopes] if scopes is not None else None,
    )
    body = msgspec.structs.replace(body, **over)
    payload, sig = sign_body(body, key or AGENTS[frm])
    return [
        *chain,
        Link(
            payload=payload, signature=sig, stamp=stamp_payload(payload, SERVICE) if stamp else b""
        ),
    ]


def verifier(revoked: set[str] | None = None) -> ChainVerifier:
    keys = {name: key.verify_key for name, key in AGENTS.items()}
    return ChainVerifier(SERVICE.verify_key, keys.get, lambda k: k in (revoked or set()))


def happy() -> list[Link]:
    chain = [root(["search", "email/send:recipient_domain=team.example", "memory/read"])]
    chain = delegate(chain, "orchestrator", "research", ["search/docs", "memory/read"])
    return delegate(chain, "research", "writer", ["search/docs"])


def test_happy_path_narrowing_chain_verifies() -> None:
    view = verifier().verify(happy(), RUN, "writer")
    assert view.principal == "alice"
    assert [link.subject for link in view.links] == ["orchestrator", "research", "writer"]
    assert [str(s) for s in view.last.scopes] == ["search/docs"]


def refused(
    chain: list[Link],
    match: str,
    recipient: str = "writer",
    run: str = RUN,
    v: ChainVerifier | None = None,
) -> None:
    with pytest.raises(ChainInvalid, match=match):
        (v or verifier()).verify(chain, run, recipient)


def test_widened_scope_is_refused() -> None:
    chain = delegate([root(["search/docs"])], "orchestrator", "writer", ["search"])
    refused(chain, r"widens scope: search is not within search/docs")


def test_dropped_constraint_is_a_widening() -> None:
    chain = delegate(
        [root(["email/send:recipient_domain=team.example"])],
        "orchestrator",
        "writer",
        ["email/send"],
    )
    refused(chain, "widens scope")


def test_sibling_path_is_not_covered() -> None:
    chain = delegate([root(["email"])], "orchestrator", "writer", ["emailer"])
    refused(chain, "widens scope: emailer")


def test_extended_expiry_is_refused() -> None:
    chain = [root(["search"])]
    parent_exp = msgspec.msgpack.decode(chain[0].payload, type=LinkBody).exp
    chain = delegate(chain, "orchestrator", "writer", ["search"], exp=parent_exp + 3600)
    refused(chain, "extends the expiry")


def test_forged_signature_is_refused() -> None:
    chain = happy()
    chain[1] = Link(payload=chain[1].payload, signature=bytes(64), stamp=chain[1].stamp)
    refused(chain, r"link 1 .*the signature does not verify")


def test_missing_stamp_is_refused() -> None:
    chain = delegate([root(["search"])], "orchestrator", "writer", ["search"], stamp=False)
    refused(chain, "stamp does not verify")


def test_link_from_an_unregistered_key_is_refused() -> None:
    chain = delegate(
        [root(["search"])], "orchestrator", "writer", ["search"], key=SigningKey.generate()
    )
    refused(chain, "the signature does not verify")
    stranger = [root(["search"], subject="mallory")]
    stranger = delegate(stranger, "mallory", "writer", ["search"], key=SigningKey.generate())
    refused(stranger, "agent:mallory is not a registered agent")


def test_truncated_chain_is_refused() -> None:
    chain = happy()
    refused([chain[0], chain[2]], "truncated or reordered")
    refused(chain[1:], "the first link must be a root")


def test_reordered_chain_is_refused() -> None:
    chain = happy()
    refused([chain[0], chain[2], chain[1]], "truncated or reordered", recipient="research")


def test_link_replayed_into_another_run_is_refused() -> None:
    refused(happy(), "belongs to run", run="01OTHER000000000000000000A")


def test_expired_and_not_yet_valid_links_are_refused() -> None:
    now = time.time()
    refused([root(["search"], subject="writer", nbf=now - 7200, exp=now - 3600)], "is expired")
    refused(
        [root(["search"], subject="writer", nbf=now + 3600, exp=now + 7200)], "is not valid yet"
    )


def test_revoked_link_agent_or_user_is_refused() -> None:
    chain = happy()
    from relaybus.services.identity.chain import link_id

    refused(chain, "is revoked", v=verifier({f"link:{link_id(chain[1].payload)}"}))
    refused(chain, "agent:research is revoked", v=verifier({"agent:research"}))
    refused(chain, "user:alice is revoked", v=verifier({"user:alice"}))


def test_depth_budget_is_enforced() -> None:
    chain = [root(["search"], depth=1)]
    chain = delegate(chain, "orchestrator", "research", ["search"])
    chain = delegate(chain, "research", "writer", ["search"])
    refused(chain, "depth budget")


def test_chain_must_end_at_the_recipient() -> None:
    refused(happy(), "ends at writer, but the message is for research", recipient="research")


def test_empty_chain_is_refused() -> None:
    refused([], "no delegation chain")


def test_principal_switch_is_refused() -> None:
    chain = delegate([root(["search"])], "orchestrator", "writer", ["search"], principal="bob")
    refused(chain, "switches the principal")


def test_delegating_someone_elses_authority_is_refused() -> None:
    chain = [root(["search"])]  # held by orchestrator
    chain = delegate(chain, "research", "writer", ["search"])  # research signs for it
    refused(chain, "agent:research delegates authority held by orchestrator")


def test_garbage_link_body_is_refused() -> None:
    refused([Link(payload=b"\xc1junk", signature=b"", stamp=b"")], "does not decode")


def test_a_run_s_root_never_holds_more_than_its_user_or_its_agent() -> None:
    """`within`: the user's caps stay caps when the agent's ceiling names the same keys."""
    from relaybus.services.identity.scopes import check, within

    user = [
        parse_scope("payments:max_amount=100"),
        parse_scope("email:recipient_domain=team.example"),
    ]
    agent = [
        parse_scope("payments/send:max_amount=1000000"),
        parse_scope("email/send:recipient_domain=evil.example"),
        parse_scope("search/docs"),
    ]
    root = within(user, agent)
    assert [str(s) for s in root] == ["payments/send:max_amount=100"]
    assert check(root, "payments/send", {"amount": 100}, "carol") == ""
    assert check(root, "payments/send", {"amount": 101}, "carol") != ""
    assert check(root, "email/send", {"to": "boss@evil.example"}, "carol") != ""
    assert [str(s) for s in within([parse_scope("search")], agent)] == ["search/docs"]


def test_a_vouched_root_skips_no_check_but_its_own_signatures() -> None:
    # Given a verifier that took a root link as verified (its process signed it)
    v = verifier()
    real = root(["search"])
    v.vouch(real)
    assert v.verify([real], RUN, "orchestrator").principal == "alice"
    # Then the same body with another signature or stamp is checked, and refused
    for forged in (
        Link(payload=real.payload, signature=bytes(64), stamp=real.stamp),
        Link(payload=real.payload, signature=real.signature, stamp=bytes(64)),
    ):
        refused([forged], "does not verify", recipient="orchestrator", v=v)
    # and a vouched link is still bound to its run and its recipient
    refused(
        [real], "belongs to run", recipient="orchestrator", run="01OTHER000000000000000000A", v=v
    )


def test_the_verified_links_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import relaybus.services.identity.chain as chain_module

    monkeypatch.setattr(chain_module, "MEMO_LINKS", 3)
    v = verifier()
    chains = [happy() for _ in range(4)]  # 3 links each: 12 verified links
    for chain in chains:
        v.verify(chain, RUN, "writer")
    assert len(v._verified) == 3
    # the oldest were let go: verifying them again checks their signatures again (and passes)
    assert v.verify(chains[0], RUN, "writer").principal == "alice"
