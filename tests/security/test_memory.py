"""Memory tenant walls with identity on, against the real memory and identity service processes:
tenant B — with its own chain, a forged chain, or no chain — can neither read, count, collect
nor forget tenant A's memories, and cross-tenant maintenance has operator-only subjects."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from relaybus.bus import (
    Bus,
    Link,
    PermissionDenied,
    Settings,
    default_topology,
    ensure,
    rpc,
)
from relaybus.memory.client import MemoryClient
from relaybus.memory.messages import AGENT_OPS, OPERATOR_OPS, Caller
from relaybus.memory.service import MemoryService
from relaybus.services.identity.chain import decode_body
from relaybus.services.identity.client import IdentityClient
from relaybus.services.identity.errors import ChainInvalid

from ..conftest import ROOT, child_env, service_process, wait_service

EVERYTHING: dict[str, Any] = {
    "dry_run": False,
    "retention_s": 0,
    "ttl_s": {"fact": 0, "note": 0},
    "cap": 0,
}
REFUSED = (ChainInvalid, PermissionDenied)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_values(identity=True, embedder="lexical")


@dataclass
class Tenants:
    bus: Bus
    identity: IdentityClient
    tokens: dict[str, str]

    async def link(self, user: str, run_id: str, token: str | None = None) -> Link:
        scopes = ["memory/read", "memory/write"]
        return await self.identity.root(user, token or self.tokens[user], run_id, "memory", scopes)

    async def client(self, user: str, run_id: str = "") -> MemoryClient:
        run_id = run_id or f"run-{user}"
        link = await self.link(user, run_id)
        return MemoryClient(self.bus, Caller(run_id=run_id, agent="memory", chain=[link]))

    def raw(self, caller: Caller) -> MemoryClient:
        return MemoryClient(self.bus, caller)


@pytest.fixture
async def tenants(settings: Settings) -> AsyncIterator[Tenants]:
    with service_process(settings, "identity"), service_process(settings, "memory"):
        async with Bus(settings, name="test") as bus:
            await ensure(bus, default_topology(bus.subjects))
            await wait_service(bus, "identity")
            await wait_service(bus, "memory", 60)
            identity = IdentityClient(bus)
            for user in ("alice", "bob"):
                await identity.add_user(user, ["memory/read", "memory/write"], [])
            tokens = {u: (await identity.issue_token(u))["token"] for u in ("alice", "bob")}
            yield Tenants(bus, identity, tokens)


async def seed(alice: MemoryClient) -> dict[str, Any]:
    fact = await alice.remember("alice's launch code is 0000", kind="fact", key="alice.code")
    await alice.remember("alice's launch code is 1234", kind="fact", key="alice.code")
    note = await alice.remember("alice parks in the north garage", kind="note")
    await alice.ingest("hb", "policy.md", "# Garage\n\nOnly alice may park in the north garage.")
    await alice.session_put("chat", {"topic": "launch"})
    return {"superseded": fact["id"], "note": note["id"]}


async def snapshot(bus: Bus, alice: MemoryClient) -> dict[str, Any]:
    """Everything of alice's a wrong request could change, and the store's totals."""
    return {
        "stats": await alice.stats(),
        "recall": await alice.recall("launch code garage", k=10),
        "history": await alice.history("alice.code"),
        "docs": await alice.search_docs("north garage", k=5),
        "session": await alice.session_get("chat"),
        "all": await rpc.call(bus, f"{bus.subjects.prefix}.svc.memory.admin_stats", {}),
    }


async def test_tenant_b_with_its_own_chain_reaches_only_its_own_memories(
    tenants: Tenants,
) -> None:
    alice, bob = await tenants.client("alice"), await tenants.client("bob")
    ids = await seed(alice)
    await bob.remember("bob's only memory", kind="note")
    before = await snapshot(tenants.bus, alice)
    assert before["stats"]["memories"] == 3 and before["stats"]["tenant"] == "alice"

    # stats and gc of B's own tenant: B's numbers, B's memories only
    stats = await bob.stats()
    assert stats["tenant"] == "bob" and stats["memories"] == 1 and stats["document_chunks"] == 0
    dry = await bob.gc(dry_run=True, **{k: v for k, v in EVERYTHING.items() if k != "dry_run"})
    assert {c["tenant"] for c in dry["candidates"]} == {"bob"}
    done = await bob.gc(**EVERYTHING)
    assert done["removed"] == 1 and {c["tenant"] for c in done["candidates"]} == {"bob"}
    # search, recall, history and sessions show nothing of A's; forget deletes nothing of A's
    assert await bob.search_docs("north garage", k=5) == []
    assert await bob.recall("launch code", k=10) == []
    assert await bob.history("alice.code") == []
    assert (await bob.session_get("chat"))["state"] == {}
    assert await bob.forget(ids=list(ids.values())) == 0
    assert await bob.forget() == 0
    assert await bob.forget(kind="fact") == 0

    after = await snapshot(tenants.bus, alice)
    assert {k: v for k, v in after.items() if k != "all"} == {
        k: v for k, v in before.items() if k != "all"
    }
    assert after["all"]["memories"] == before["all"]["memories"] - 1  # bob's own, gone


async def test_a_principal_field_never_picks_the_tenant(tenants: Tenants) -> None:
    alice = await tenants.client("alice")
    await seed(alice)
    before = await snapshot(tenants.bus, alice)
    link = await tenants.link("bob", "run-b")
    claims = tenants.raw(
        Caller(run_id="run-b", agent="memory", principal="user:alice", chain=[link])
    )
    for call in _every_operation(claims):
        with pytest.raises(ChainInvalid, match="names principal 'user:alice' but its chain"):
            await call
    assert await snapshot(tenants.bus, alice) == before


async def test_forged_chains_are_refused_and_change_nothing(tenants: Tenants) -> None:
    alice = await tenants.client("alice")
    await seed(alice)
    before = await snapshot(tenants.bus, alice)
    bobs = await tenants.link("bob", "run-f")
    # bob's link rewritten to act for alice: neither signature nor stamp verify any more
    body = msgspec.structs.replace(decode_body(bobs.payload), principal="alice")
    rewritten = Link(
        payload=msgspec.msgpack.encode(body), signature=bobs.signature, stamp=bobs.stamp
    )
    garbage = Link(payload=b"\x81\xa1x\x01", signature=b"sig", stamp=b"stamp")
    # alice's genuine link, replayed by another agent name or in another run
    alices = await tenants.link("alice", "run-a")
    forged = {
        "rewritten": Caller(run_id="run-f", agent="memory", chain=[rewritten]),
        "garbage": Caller(run_id="run-f", agent="memory", chain=[garbage]),
        "other run": Caller(run_id="run-f", agent="memory", chain=[alices]),
        "other agent": Caller(run_id="run-a", agent="research", chain=[alices]),
    }
    for what, caller in forged.items():
        for call in _every_operation(tenants.raw(caller)):
            with pytest.raises(ChainInvalid, match="chain does not verify") as refused:
                await call
            assert "memory " in str(refused.value), what
    assert await snapshot(tenants.bus, alice) == before


async def test_no_chain_is_refused_clearly_and_changes_nothing(tenants: Tenants) -> None:
    alice = await tenants.client("alice")
    await seed(alice)
    before = await snapshot(tenants.bus, alice)
    for caller in (
        Caller(run_id="run-n", agent="memory"),
        Caller(run_id="run-n", agent="memory", principal="user:alice"),
    ):
        for call in _every_operation(tenants.raw(caller)):
            with pytest.raises(ChainInvalid, match="carries no delegation chain"):
                await call
    # a bare request (no caller at all) to the tenant gc / stats says where the operator's are
    for op in ("gc", "stats"):
        with pytest.raises(ChainInvalid, match=f"`admin_{op}`"):
            await rpc.call(
                tenants.bus, f"{tenants.bus.subjects.prefix}.svc.memory.{op}", EVERYTHING
            )
    assert await snapshot(tenants.bus, alice) == before


async def test_every_agent_operation_needs_a_chain_and_operator_ones_are_apart(
    tenants: Tenants,
) -> None:
    assert set(AGENT_OPS).isdisjoint(OPERATOR_OPS)
    assert set(MemoryService.ops) == {*AGENT_OPS, *OPERATOR_OPS, "ping"}
    caller = {"run_id": "r", "agent": "memory", "principal": "user:alice"}
    needs = {"text": "t", "query": "q", "key": "k", "collection": "c", "source": "s"}
    for op in AGENT_OPS:
        body = {"caller": caller, **needs, "session": "s", "action": "get"}
        subject = f"{tenants.bus.subjects.prefix}.svc.memory.{op}"
        with pytest.raises(ChainInvalid, match=f"memory {op} refused: the request carries no"):
            await rpc.call(tenants.bus, subject, body)
    # the operator's (a full-access connection here) still sees and collects every tenant
    alice, bob = await tenants.client("alice"), await tenants.client("bob")
    await alice.remember("alice note", kind="note")
    await bob.remember("bob note", kind="note")
    prefix = tenants.bus.subjects.prefix
    totals = await rpc.call(tenants.bus, f"{prefix}.svc.memory.admin_stats", {})
    assert totals["tenants"] == 2 and totals["memories"] == 2
    swept = await rpc.call(tenants.bus, f"{prefix}.svc.memory.admin_gc", EVERYTHING)
    assert swept["removed"] == 2 and {c["tenant"] for c in swept["candidates"]} == {"alice", "bob"}


def test_agents_nats_permissions_list_exactly_the_agent_operations() -> None:
    from relaybus.bus import Subjects
    from relaybus.services.identity.messages import AgentRecord
    from relaybus.services.identity.natsconfig import agent_permissions

    subjects = Subjects("relay")
    record = AgentRecord(name="research", public_key="00" * 32)
    allowed = agent_permissions(subjects, record, [record])["publish"]
    assert isinstance(allowed, dict)
    memory = {s.rsplit(".", 1)[1] for s in allowed["allow"] if s.startswith("relay.svc.memory.")}
    assert memory == set(AGENT_OPS)
    assert not memory & set(OPERATOR_OPS)


async def test_the_cli_runs_maintenance_on_the_operator_subjects(
    settings: Settings, tenants: Tenants
) -> None:
    alice = await tenants.client("alice")
    await seed(alice)
    everyone = _cli(settings, "stats", "--json")
    assert everyone.returncode == 0, everyone.stderr
    assert json.loads(everyone.stdout)["tenants"] == 1
    own = _cli(settings, "stats", "--as", "bob", "--token", tenants.tokens["bob"], "--json")
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["memories"] == 0
    stolen = _cli(settings, "gc", "--as", "alice", "--token", tenants.tokens["bob"], "--json")
    assert stolen.returncode != 0 and "could not be authenticated" in stolen.stderr
    dry = _cli(settings, "gc", "--dry-run", "--retention-days", "0", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["removed"] == 0
    assert (await alice.stats())["memories"] == 3


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "memory", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(settings),
        timeout=60,
    )


def _every_operation(client: MemoryClient) -> list[Any]:
    """One call of each tenant operation, each of which would read or change A's memories if
    the wall let it: stats, gc, search, recall, history, forget, sessions, remember, ingest."""
    return [
        client.stats(),
        client.gc(**EVERYTHING),
        client.gc(dry_run=True),
        client.search_docs("north garage", k=5),
        client.recall("launch code", k=5),
        client.history("alice.code"),
        client.forget(),
        client.forget(kind="fact"),
        client.session_get("chat"),
        client.session_put("chat", {"topic": "hijacked"}),
        client.close_session("chat"),
        client.remember("planted by someone else", kind="note"),
        client.ingest("hb", "policy.md", "planted"),
    ]
