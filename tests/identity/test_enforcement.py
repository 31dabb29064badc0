"""Identity end to end: a real identity service process, real agent processes, real NATS."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relaybus.agents.control import send_signal
from relaybus.agents.submit import submit, wait_for_run
from relaybus.bus import (
    Bus,
    ConfigError,
    PermissionDenied,
    RelayError,
    Settings,
    default_topology,
    ensure,
    new_envelope,
)
from relaybus.bus.feed import EventFeed
from relaybus.bus.kv import Bucket
from relaybus.bus.tracing import read_spans
from relaybus.services.identity.client import (
    IdentityClient,
    IdentityGate,
    read_audit,
    write_agent_key,
)
from relaybus.services.identity.errors import RevocationUnknown
from relaybus.services.identity.messages import AuditRecord

from ..conftest import ROOT, Spawn, child_env, service_process, wait_for, wait_service

USER_SCOPES = ["search", "email/send:recipient_domain=team.example", "data/read:tenant=$principal"]


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.with_values(identity=True, trace_dir=tmp_path / "spans")


@pytest.fixture
def identity_service(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    with service_process(settings, "identity") as proc:
        yield proc


@pytest.fixture
async def idbus(
    settings: Settings, identity_service: subprocess.Popen[bytes]
) -> AsyncIterator[Bus]:
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        client = IdentityClient(bus)
        await wait_service(bus, "identity")
        home = settings.home.resolve()
        policy = {
            "i_orch": (["search", "email/send", "payments"], ["i_research", "i_writer"]),
            "i_research": (["search/docs"], []),
            "i_writer": (["email/send"], []),
            "i_data": (["data/read"], []),
            "i_wait": (["data/read"], []),
            "i_rogue": (["email/send"], []),
        }
        for name, (scopes, handoff) in policy.items():
            await client.add_agent(name, write_agent_key(home, name).verify_key, scopes, handoff)
        await client.add_user("alice", USER_SCOPES, [])
        await client.add_user("bob", USER_SCOPES, [])
        yield bus


@pytest.fixture
async def token(idbus: Bus) -> str:
    return (await IdentityClient(idbus).issue_token("alice"))["token"]


async def run(bus: Bus, agent: str, task: dict[str, object], token: str, **kw: object) -> object:
    return await submit(
        bus,
        agent,
        json.dumps(task).encode(),
        sender="user:alice",
        token=token,
        wait=True,
        timeout_s=40,
        **kw,
    )  # type: ignore[arg-type]


async def audit_records(bus: Bus, principal: str = "alice") -> list[AuditRecord]:
    """Every decision recorded for `principal`: the services' and each agent's own subject."""
    from relaybus.services.identity.client import read_audit

    return await read_audit(bus, principal)


def start_all(spawn: Spawn) -> None:
    for spec in ("Orchestrator", "Research", "Writer"):
        spawn(f"identity_agents:{spec}", RELAYBUS_IDENTITY="1")


MAIL_OK = {"to": "team@team.example"}


async def test_happy_path_user_orchestrator_research_writer(
    idbus: Bus, token: str, spawn: Spawn, settings: Settings
) -> None:
    start_all(spawn)
    done = await run(idbus, "i_orch", {"q": "acme", "mail": MAIL_OK}, token)
    assert done.status == "completed", done  # type: ignore[attr-defined]
    assert done.result == {"sent_to": "team@team.example", "subject": "1 notes"}  # type: ignore[attr-defined]
    out = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "identity", "chain", done.run_id, "--json"],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        env=child_env(settings),
        cwd=ROOT,
        timeout=60,
    )
    links = json.loads(out.stdout)
    pairs = {(link["issuer"], link["subject"], tuple(link["scopes"])) for link in links}
    assert pairs == {
        # alice's scopes within what i_orch may ever hold (search, email/send, payments):
        # her data/read stays with her
        ("user:alice", "i_orch", ("search", "email/send:recipient_domain=team.example")),
        ("agent:i_orch", "i_research", ("search/docs",)),
        ("agent:i_orch", "i_writer", ("email/send:recipient_domain=team.example",)),
    }
    decisions = {(r.action, r.decision) for r in await audit_records(idbus)}
    assert {
        ("run/root", "allow"),
        ("chain/delegate", "allow"),
        ("tool/search/docs", "allow"),
        ("tool/email/send", "allow"),
    } <= decisions


@pytest.mark.parametrize(
    "mail",
    [
        {"to": "a@evil.example@team.example"},
        {"to": '"boss@team.example" <boss@evil.example>'},
        {"to": "team@team.example", "bcc": ["leak@evil.example"]},
        {"to": "team@team.example", "cc": ["ok@team.example", "x@team.example.evil.example"]},
    ],
    ids=["double-at", "display-name", "bcc", "lookalike-domain"],
)
async def test_recipient_tricks_are_denied_and_audited(
    idbus: Bus, token: str, spawn: Spawn, mail: dict[str, object]
) -> None:
    start_all(spawn)
    done = await run(idbus, "i_orch", {"q": "acme", "mail": mail}, token)
    assert done.status == "failed"  # type: ignore[attr-defined]
    assert done.error.startswith("PermissionDenied: send_email (email/send) denied")  # type: ignore[attr-defined]
    denied = [
        r for r in await audit_records(idbus) if r.decision == "deny" and r.tool == "send_email"
    ]
    assert len(denied) == 1 and denied[0].run_id == done.run_id and denied[0].args_digest  # type: ignore[attr-defined]
    assert len(denied[0].chain) == 2
    # and it is in the run's trace: a tool span with error status
    assert idbus.settings.trace_dir is not None
    await wait_for(
        lambda: any(
            s["name"] == "execute_tool send_email"
            and s["attributes"].get("relaybus.run_id") == done.run_id  # type: ignore[attr-defined]
            for s in read_spans(idbus.settings.trace_dir)  # type: ignore[arg-type]
        ),
        what="the denied call's span",
    )
    (span,) = [
        s
        for s in read_spans(idbus.settings.trace_dir)
        if s["name"] == "execute_tool send_email"
        and s["attributes"].get("relaybus.run_id") == done.run_id  # type: ignore[attr-defined]
    ]
    assert span["status"] == "ERROR" and "recipient_domain=team.example" in str(span["error"])
    assert span["attributes"]["relaybus.decision"] == "deny"  # type: ignore[index]


async def test_widened_delegation_is_refused_by_the_service(
    idbus: Bus, token: str, spawn: Spawn
) -> None:
    start_all(spawn)
    done = await run(
        idbus,
        "i_orch",
        {"q": "acme", "mail": MAIL_OK, "research_scopes": ["payments/charge"]},
        token,
    )
    assert done.status == "failed"  # type: ignore[attr-defined]
    assert "i_research may never hold payments/charge" in done.error  # type: ignore[attr-defined]


async def test_handoff_the_policy_forbids_is_refused(idbus: Bus, token: str, spawn: Spawn) -> None:
    start_all(spawn)
    done = await run(idbus, "i_orch", {"q": "acme", "mail": MAIL_OK, "writer": "i_rogue"}, token)
    assert done.status == "failed"  # type: ignore[attr-defined]
    assert "policy does not allow i_orch → i_rogue" in done.error  # type: ignore[attr-defined]


async def test_raw_message_without_a_chain_is_refused(idbus: Bus, spawn: Spawn) -> None:
    spawn("identity_agents:Research", RELAYBUS_IDENTITY="1")
    env = new_envelope(
        kind="task", sender="user:mallory", recipient="i_research", payload=b'{"q": "x"}'
    )
    async with EventFeed(idbus, env.run_id, replay=True) as feed:
        await idbus.publish(env)
        done = await wait_for_run(feed, env.run_id, 30)
    assert (
        done.status == "failed" and done.error is not None and "no delegation chain" in done.error
    )


async def test_confused_deputy_cannot_read_another_users_data(
    idbus: Bus, token: str, spawn: Spawn
) -> None:
    spawn("identity_agents:DataReader", RELAYBUS_IDENTITY="1")
    mine = await run(idbus, "i_data", {"tenant": "alice"}, token)
    assert mine.result == "rows of alice"  # type: ignore[attr-defined]
    theirs = await run(idbus, "i_data", {"tenant": "bob"}, token)
    assert theirs.status == "failed"  # type: ignore[attr-defined]
    assert "tenant='bob' is not 'alice'" in theirs.error  # type: ignore[attr-defined]


async def test_user_revoked_mid_run_stops_the_next_tool_call(
    idbus: Bus, token: str, spawn: Spawn
) -> None:
    spawn("identity_agents:Waiter", RELAYBUS_IDENTITY="1")
    outcome = await submit(idbus, "i_wait", b"{}", sender="user:alice", token=token)
    async with EventFeed(idbus, outcome.run_id, replay=True) as feed:
        while (event := await feed.next(30)) is not None and event.kind != "suspended":
            pass
        await IdentityClient(idbus).revoke("user", "alice", "left the company")
        await asyncio.sleep(1.0)  # revocations must be live everywhere within 1 s
        await send_signal(idbus, outcome.run_id, "go")
        done = await wait_for_run(feed, outcome.run_id, 30)
    assert done.status == "failed"
    assert done.error is not None and "user:alice is revoked" in done.error


async def test_bad_token_and_wider_root_request_are_refused(idbus: Bus, token: str) -> None:
    with pytest.raises(PermissionDenied, match="could not be authenticated"):
        await submit(idbus, "i_orch", b"{}", sender="user:alice", token=token[:-2] + "xx")
    with pytest.raises(PermissionDenied, match="could not be authenticated"):
        await submit(idbus, "i_orch", b"{}", sender="user:bob", token=token)
    with pytest.raises(PermissionDenied, match="does not hold payments"):
        await submit(idbus, "i_orch", b"{}", sender="user:alice", token=token, scopes=["payments"])
    with pytest.raises(ConfigError, match="scope"):
        await IdentityClient(idbus).add_user("carol", ["/bad"], [])


async def test_revoked_token_is_refused(idbus: Bus, token: str) -> None:
    token_id = token.split("_")[2]
    await IdentityClient(idbus).revoke("token", token_id)
    with pytest.raises(PermissionDenied, match="revoked"):
        await submit(idbus, "i_orch", b"{}", sender="user:alice", token=token)


async def test_revoking_a_user_or_agent_nobody_registered_says_so_and_revokes_nothing(
    idbus: Bus, token: str
) -> None:
    # (a mistyped name used to answer "revoked", so the operator believed it done)
    identity = IdentityClient(idbus)
    revoked = await Bucket.open(idbus, idbus.subjects.bucket("revoked"))
    for kind, name in (("user", "alcie"), ("agent", "mallroy")):
        with pytest.raises(ConfigError, match=f"no {kind} '{name}' is registered, so nothing"):
            await identity.revoke(kind, name, "typo")
        assert await revoked.get(f"{kind}.{name}") is None
    denied = await read_audit(idbus, "admin", decision="deny")  # each refusal is audited
    assert {"user/revoke", "agent/revoke"} <= {r.action for r in denied}
    assert any("'alcie'" in r.reason for r in denied) and any(
        "'mallroy'" in r.reason for r in denied
    )
    with pytest.raises(RelayError, match=r"user name 'a\.b' is not allowed"):
        await identity.revoke("user", "a.b", "not a name")
    # a token is revoked by its id, one issued to the user named: the whole token (its secret
    # went into the revocation list, and the token kept working), an unknown id, or another
    # user's id revokes nothing
    token_id = token.split("_")[2]
    for ident, user in ((token, "alice"), ("deadbeef", "alice"), (token_id, "bob")):
        with pytest.raises(ConfigError, match=r"not a token id|has no token"):
            await identity.revoke("token", ident, "typo", user=user)
    assert [k for k in await revoked.keys() if k.startswith("token")] == []
    with pytest.raises(ConfigError, match="'nope' is not a link id"):
        await identity.revoke("link", "nope", "typo")
    # the operator finds a user's token ids (never their hashes) to revoke one
    (listed,) = [u for u in await identity.list_users() if u["id"] == "alice"]
    assert listed["tokens"] == [token_id] and listed["revoked"] is False
    assert not re.search(r"[0-9a-f]{64}", str(listed))  # no token's hash
    assert await identity.revoke("token", token_id, "lost", user="alice") is True
    (listed,) = [u for u in await identity.list_users() if u["id"] == "alice"]
    assert listed["tokens"] == []  # a revoked token is not live
    assert await identity.revoke("token", token_id, "lost", user="alice") is False  # already
    # and the registered user is revoked as ever
    assert await identity.revoke("user", "alice", "left") is True
    assert await revoked.get("user.alice") is not None
    assert await identity.revoke("user", "alice", "left") is False


def test_agent_without_a_key_says_how_to_register(settings: Settings, tmp_path: Path) -> None:
    env = child_env(settings, RELAYBUS_IDENTITY="1", RELAYBUS_HOME=str(tmp_path / "empty"))
    out = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "agent", "run", "identity_agents:Writer"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 1 and "relaybus identity agent add i_writer" in out.stderr


async def test_a_run_starts_with_no_more_than_its_agent_may_ever_hold(
    idbus: Bus, token: str
) -> None:
    """alice holds search, email/send and data/read; i_research may only ever hold search/docs:
    the root link of a run at i_research carries search/docs alone, not alice's mail rights."""
    from relaybus.services.identity.chain import decode_body

    identity = IdentityClient(idbus)
    research = await identity.root("alice", token, "run-narrow", "i_research", task_id="t1")
    assert [str(s) for s in decode_body(research.payload).scopes] == ["search/docs"]
    orch = await identity.root("alice", token, "run-orch", "i_orch", task_id="t2")
    assert sorted(str(s) for s in decode_body(orch.payload).scopes) == [
        "email/send:recipient_domain=team.example",
        "search",
    ]


async def test_a_user_id_with_underscores_gets_a_token_that_works(idbus: Bus) -> None:
    identity = IdentityClient(idbus)
    await identity.add_user("travel_desk", ["search"], [])
    token = (await identity.issue_token("travel_desk"))["token"]
    assert await identity.authenticate(token, "travel_desk") == "travel_desk"
    assert await identity.authenticate(token) == "travel_desk"  # the user the token names
    with pytest.raises(PermissionDenied, match="could not be authenticated"):
        await identity.authenticate(token, "travel")
    # a user id that holds `_<8 hex>_` itself is named whole by its token, beside a user
    # named like its first part (a shortest match named `svc`, and audited svc's refusals)
    from relaybus import Client
    from relaybus.services.identity.messages import token_user

    for user in ("svc_20240101_bot", "svc"):
        await identity.add_user(user, ["search"], [])
    dated = (await identity.issue_token("svc_20240101_bot"))["token"]
    assert token_user(dated) == "svc_20240101_bot"
    assert await identity.authenticate(dated) == "svc_20240101_bot"
    assert Client(idbus.settings, token=dated).user == "svc_20240101_bot"


async def test_a_revocation_holds_at_a_gate_whose_watch_someone_deleted(idbus: Bus) -> None:
    """nats-py does not notice that another client deleted its watch consumer: a gate that
    trusted its watch alone would never see a later revocation. Each copy checks the stream
    (bus/kvview.py), so within seconds the gate either knows or fails closed."""
    from relaybus.services.identity.client import IdentityGate, read_agent_key

    home = idbus.settings.home.resolve()
    gate = await IdentityGate.open(idbus, "i_orch", read_agent_key(home, "i_orch"))
    try:
        assert gate.fresh() and not gate._is_revoked("user:alice")
        # Given every watch of the revocations deleted by a local process
        stream = f"KV_{idbus.subjects.bucket('revoked')}"
        async with Bus(idbus.settings, name="evil") as evil:
            listed = await evil.nc.request(f"$JS.API.CONSUMER.LIST.{stream}", b"{}", timeout=5)
            names = [c["name"] for c in json.loads(listed.data)["consumers"]]
            assert names  # the identity service's and this gate's
            for name in names:
                await evil.nc.request(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"", timeout=5)
        # When alice is revoked
        await IdentityClient(idbus).revoke("user", "alice", "stolen laptop")
        # Then past the copy's lag the gate never says she is not revoked
        await asyncio.sleep(4.5)
        assert verdict(gate, "user:alice") is not False
        # and a view that is not live gives no verdict for anyone (the caller retries), never
        # "revoked" for a key nobody revoked: that would dead-letter a good chain
        if not gate.fresh():
            with pytest.raises(RevocationUnknown):
                gate._is_revoked("user:bob")
        # And once it watches again, it knows (and is fresh)
        await wait_for(gate.fresh, 15, "the gate's revocation view to be live again")
        assert gate._is_revoked("user:alice")
    finally:
        await gate.close()


def verdict(gate: Any, key: str) -> bool | None:
    """The gate's answer for `key`: revoked or not, or None when it gives no verdict."""
    try:
        return bool(gate._is_revoked(key))
    except RevocationUnknown:
        return None


async def test_a_service_started_before_the_identity_service_waits_for_its_trust_root(
    settings: Settings,
) -> None:
    # Given a new deployment whose services all start at once (`relaybus up`, compose)
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        opening = asyncio.create_task(IdentityGate.open(bus, "memory", None))
        await asyncio.sleep(1.0)
        assert not opening.done()  # no trust root yet: it waits, it does not exit
        # When the identity service comes up and publishes its trust root
        with service_process(settings, "identity"):
            gate = await asyncio.wait_for(opening, 30)
            # Then the gate opens with that root
            try:
                assert gate.fresh()
            finally:
                await gate.close()
