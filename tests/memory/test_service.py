"""The memory service over a real bus: remember semantics, isolation, restarts, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relaybus.agents.submit import submit
from relaybus.bus import Bus, PermissionDenied, Settings, rpc
from relaybus.memory.client import MemoryClient
from relaybus.memory.messages import Caller
from relaybus.memory.service import MemoryService
from relaybus.memory.store import MemoryRefused

from ..conftest import Spawn, service_process, wait_service
from .conftest import Clock, client


async def test_add_noop_merge_supersede_and_history(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    _, clock = served
    alice = client(bus, "alice")
    first = await alice.remember("alice drinks green tea every morning", key="alice.drink")
    assert first["action"] == "ADD"
    assert (await alice.remember("alice drinks green tea every morning", key="alice.drink"))[
        "action"
    ] == "NOOP"
    merged = await alice.remember(
        "Alice drinks green tea every morning!", metadata={"source": "chat"}
    )
    assert merged == {"action": "MERGE", "id": first["id"]}
    before = clock.now
    clock.now += 3600
    changed = await alice.remember("alice switched to black coffee", key="alice.drink")
    assert changed["action"] == "SUPERSEDE" and changed["superseded"] == [first["id"]]
    now_hits = await alice.recall("what does alice drink", k=3)
    assert [h["text"] for h in now_hits][:1] == ["alice switched to black coffee"]
    assert first["id"] not in [h["id"] for h in now_hits]
    then = await alice.recall("what does alice drink", k=3, as_of=before + 1)
    assert [h["id"] for h in then][:1] == [first["id"]]
    history = await alice.history("alice.drink")
    assert [h["text"] for h in history] == [
        "alice drinks green tea every morning",
        "alice switched to black coffee",
    ]
    assert history[0]["valid_to"] == history[1]["valid_from"]


async def test_one_tenant_never_sees_or_deletes_anothers_memories(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    alice, mallory = client(bus, "alice"), client(bus, "mallory")
    secret = await alice.remember("the launch code is 0000", kind="secret")
    assert await mallory.recall("launch code", k=10) == []
    assert await mallory.recall("launch code", k=10, kind="secret") == []
    assert await mallory.forget(ids=[secret["id"]]) == 0
    assert await mallory.forget(kind="secret") == 0
    assert [h["id"] for h in await alice.recall("launch code", k=1)] == [secret["id"]]


async def test_bad_input_is_refused_clearly(bus: Bus, served: tuple[MemoryService, Clock]) -> None:
    alice = client(bus, "alice")
    with pytest.raises(MemoryRefused, match="cannot remember empty text"):
        await alice.remember("   ")
    with pytest.raises(Exception, match="memories are at most 8000"):
        await alice.remember("x" * 9000)
    with pytest.raises(Exception, match="1 <= k <= 100"):
        await alice.recall("tea", k=0)
    with pytest.raises(Exception, match="unknown memory operation 'drop'"):
        await rpc.call(bus, f"{bus.subjects.prefix}.svc.memory.drop", {})
    with pytest.raises(PermissionDenied, match="no principal"):
        await MemoryClient(bus, Caller(run_id="R", agent="a")).recall("tea")


async def test_memories_survive_a_service_restart(
    bus: Bus, tmp_path: Path, settings: Settings, spawn: Spawn
) -> None:
    home_settings = settings.model_copy(update={"home": tmp_path / "home"})
    with service_process(home_settings, "memory"):
        await wait_service(bus, "memory")
        kept = await client(bus, "alice").remember("alice's office is on floor 3")
    with service_process(home_settings, "memory"):
        await wait_service(bus, "memory")
        hits = await client(bus, "alice").recall("which floor is alice's office on", k=1)
    assert [h["id"] for h in hits] == [kept["id"]]


async def test_agents_use_memory_through_ctx(bus: Bus, settings: Settings, spawn: Spawn) -> None:
    with service_process(settings, "memory"):
        await wait_service(bus, "memory")
        spawn("runtime_agents:Rememberer")
        done = await submit(
            bus,
            "rememberer",
            json.dumps({"fact": "acme raised prices in march"}).encode(),
            sender="user:alice",
            wait=True,
            timeout_s=30,
        )
        assert done.status == "completed", done
        assert done.result["recalled"] == ["acme raised prices in march"]
        other = await client(bus, "bob").recall("acme prices", k=5)
        assert other == []


TOPICS = [
    "travel",
    "expenses",
    "security",
    "onboarding",
    "vacation",
    "equipment",
    "remote work",
    "benefits",
    "training",
    "parking",
]


def handbook(changed: str = "") -> str:
    sections = []
    for i, topic in enumerate(TOPICS):
        rule = changed if changed and topic == "parking" else f"rule number {i * 7 + 3} applies"
        sections.append(
            f"## {topic.title()} policy\n\nThe {topic} policy says that {rule} "
            f"to every {topic} request, reviewed by the {topic} desk."
        )
    return "\n\n".join(sections)


async def test_rag_over_a_generated_handbook_and_reingest(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    alice = client(bus, "alice")
    first = await alice.ingest("handbook", "handbook.md", handbook())
    assert first["chunks"] >= 2 and first["added"] == first["chunks"]
    correct = 0
    for i, topic in enumerate(TOPICS):
        hits = await alice.search_docs(
            f"what does the {topic} policy say", k=3, collection="handbook"
        )
        assert all(h["collection"] == "handbook" for h in hits)
        correct += any(f"rule number {i * 7 + 3} applies" in h["text"] for h in hits)
    assert correct >= 9  # recall@3 over the ten sections
    again = await alice.ingest("handbook", "handbook.md", handbook())
    assert again["added"] == 0 and again["removed"] == 0
    edited = await alice.ingest(
        "handbook", "handbook.md", handbook(changed="only electric cars may park")
    )
    assert edited["added"] >= 1 and edited["removed"] >= 1 and edited["kept"] >= 1
    hits = await alice.search_docs("which cars may park", k=1)
    assert "only electric cars may park" in hits[0]["text"]
    assert await client(bus, "mallory").search_docs("parking policy", k=5) == []


async def test_gc_removes_superseded_facts_past_retention(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    _, clock = served
    alice = client(bus, "alice")
    old = await alice.remember("alice lives in lyon", key="alice.city")
    await alice.remember("alice lives in paris", key="alice.city")
    scratch = await alice.remember("temporary note about lunch", kind="scratch")
    clock.now += 2 * 86400
    report = await rpc.call(
        bus,
        f"{bus.subjects.prefix}.svc.memory.admin_gc",
        {"dry_run": True, "retention_s": 86400, "ttl_s": {"scratch": 3600}},
    )
    assert {c["id"] for c in report["candidates"]} == {old["id"], scratch["id"]} and report[
        "removed"
    ] == 0
    done = await rpc.call(
        bus,
        f"{bus.subjects.prefix}.svc.memory.admin_gc",
        {"dry_run": False, "retention_s": 86400, "ttl_s": {"scratch": 3600}},
    )
    assert done["removed"] == 2
    assert [h["text"] for h in await alice.history("alice.city")] == ["alice lives in paris"]


async def test_sessions_keep_state_and_turns_per_tenant_and_summarize_on_close(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    alice, mallory = client(bus, "alice"), client(bus, "mallory")
    await alice.session_put("chat-1", {"topic": "pricing"})
    for i in range(5):
        await alice.append_turn(
            "chat-1", "user" if i % 2 == 0 else "agent", f"turn {i} about acme pricing"
        )
    assert (await alice.session_get("chat-1"))["state"] == {"topic": "pricing"}
    assert [t["text"] for t in await alice.window("chat-1", last=2)] == [
        "turn 3 about acme pricing",
        "turn 4 about acme pricing",
    ]
    assert await mallory.window("chat-1") == []  # the same session id, another tenant: nothing
    closed = await alice.close_session("chat-1")
    assert closed["action"] == "ADD" and "turn 4 about acme pricing" in closed["summary"]
    assert await alice.window("chat-1") == []
    hits = await alice.recall("acme pricing conversation", k=1, kind="session_summary")
    assert hits and hits[0]["id"] == closed["id"]
    with pytest.raises(MemoryRefused, match="session id"):
        await alice.window("bad id!")


async def test_preloaded_context_stays_within_its_token_budget(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    from relaybus.memory.preload import assemble, estimate_tokens

    alice = client(bus, "alice")
    await alice.append_turn("c1", "user", "compare acme and globex pricing")
    await alice.remember("acme raised prices by 10 percent in march")
    await alice.ingest(
        "notes", "globex.md", "Globex charges 30 euros per seat.\n\n" + "filler text. " * 200
    )
    roomy = await assemble(alice, "acme globex pricing", budget_tokens=2000, session="c1")
    assert [u["kind"] for u in roomy["used"]][:2] == ["session", "memory"]
    assert '<data kind="memory"' in roomy["text"] and roomy["tokens"] <= 2000
    tight = await assemble(alice, "acme globex pricing", budget_tokens=60, session="c1")
    assert tight["tokens"] <= 60 and tight["dropped"] >= 1
    assert estimate_tokens(tight["text"]) <= 60 + len(tight["used"])


async def test_a_tenants_own_gc_and_stats_stay_in_its_tenant(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    _, clock = served
    alice, bob = client(bus, "alice"), client(bus, "bob")
    await alice.remember("alice scratch note", kind="scratch")
    await bob.remember("bob scratch note", kind="scratch")
    await alice.ingest("hb", "a.md", "alice's handbook")
    clock.now += 2 * 86400
    assert await alice.stats() == {
        "tenant": "alice",
        "embedder": "lexical-v1-512",
        "memories": 1,
        "document_chunks": 1,
        "superseded": 0,
    }
    done = await bob.gc(dry_run=False, ttl_s={"scratch": 3600})
    assert done["removed"] == 1 and [c["tenant"] for c in done["candidates"]] == ["bob"]
    assert (await alice.stats())["memories"] == 1 and (await bob.stats())["memories"] == 0
    totals = await rpc.call(bus, f"{bus.subjects.prefix}.svc.memory.admin_stats", {})
    assert totals["tenants"] == 1 and totals["memories"] == 1


async def test_session_keys_never_collide_across_tenants(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    from relaybus.memory.sessions import tenant_token

    assert tenant_token("alice") == "alice" and tenant_token("a-b") == "a-b"
    assert len({tenant_token(t) for t in ("a.b", "a_b", "a b", "a_00002eb")}) == 4
    dotted, underscored = client(bus, "a.b"), client(bus, "a_b")
    await dotted.session_put("chat", {"secret": "dotted"})
    assert (await underscored.session_get("chat"))["state"] == {}
