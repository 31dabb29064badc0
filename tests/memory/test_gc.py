"""Garbage collection: near-duplicate sweeps, decay-based caps, the background pass, bad policy."""

from __future__ import annotations

import asyncio

import pytest

from relaybus.bus import Bus, ConfigError, Settings, rpc
from relaybus.memory.embed import LexicalEmbedder
from relaybus.memory.service import MERGE_SCORE, MemoryService, sweep

from .conftest import Clock, client

DAY = 86400.0


async def gc(bus: Bus, **policy: object) -> dict:
    return await rpc.call(bus, f"{bus.subjects.prefix}.svc.memory.admin_gc", policy)


async def texts(bus: Bus, user: str, query: str = "alice tea lyon note") -> set[str]:
    return {h["text"] for h in await client(bus, user).recall(query, k=20)}


async def test_near_duplicates_are_folded_into_the_stronger_within_a_tenant_only(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    a, b = "alice drinks green tea every morning", "alice drinks green tea every single morning"
    va, vb = LexicalEmbedder().embed([a, b])
    cosine = sum(x * y for x, y in zip(va, vb, strict=True))
    assert 0.5 < cosine < MERGE_SCORE  # different enough that remember() kept both
    alice, bob = client(bus, "alice"), client(bus, "bob")
    ids = {}
    for text in (a, b, "alice lives in lyon"):
        added = await alice.remember(text)
        assert added["action"] == "ADD"
        ids[text] = added["id"]
    await bob.remember(b)  # the same text in another tenant is not a duplicate of alice's
    await alice.remember("Alice drinks green tea every single morning!")  # MERGE: b seen twice
    threshold = cosine - 0.01

    report = await gc(bus, dry_run=True, duplicate_score=threshold)
    assert [(c["text"], c["reason"].split(" (")[0]) for c in report["candidates"]] == [
        (a, f"near-duplicate of {ids[b]}")  # b is stronger: seen twice
    ]
    assert report["removed"] == 0 and a in await texts(bus, "alice")

    done = await gc(bus, dry_run=False, duplicate_score=threshold)
    assert done["removed"] == 1
    assert await texts(bus, "alice") == {b, "alice lives in lyon"}
    assert await texts(bus, "bob") == {b}
    survivors = await service_points(served[0], "alice")
    assert survivors[b]["seen"] == 3  # its own two sightings plus the folded duplicate's one


async def service_points(service: MemoryService, tenant: str) -> dict[str, dict]:
    return {
        h.payload["text"]: h.payload
        for h in await service.store.scroll_all("memories")
        if h.payload["tenant"] == tenant
    }


async def test_the_cap_removes_the_weakest_by_decayed_strength(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    _, clock = served
    alice = client(bus, "alice")
    await alice.remember("note one about the lyon office")
    await alice.remember("note two: alice likes tea")
    clock.now += 40 * DAY
    await alice.remember("note three: the tea supplier changed")
    # seen twice, but 40 days ago: 2 x 0.5 ** (40 / 30) = 0.79 < 1 (the fresh note)
    await alice.remember("Note two - alice likes tea.")
    clock.now += 1 * DAY
    await alice.remember("note four: lyon rent went up")
    await client(bus, "bob").remember("bob's only note about tea")

    report = await gc(bus, dry_run=False, cap=2, half_life_s=30 * DAY)
    gone = {c["text"] for c in report["candidates"]}
    # strengths: one 0.5 ** (41/30) = 0.39, two 2 x 0.5 ** (1/30) = 1.95,
    # three 0.5 ** (1/30) = 0.98, four 1.0 -> one and three go
    assert gone == {"note one about the lyon office", "note three: the tea supplier changed"}
    assert all("over the cap of 2" in c["reason"] for c in report["candidates"])
    assert await texts(bus, "alice") == {
        "note two: alice likes tea",
        "note four: lyon rent went up",
    }
    assert await texts(bus, "bob") == {"bob's only note about tea"}


async def test_the_background_pass_applies_the_settings_policy(
    bus: Bus, settings: Settings, served: tuple[MemoryService, Clock]
) -> None:
    service, clock = served
    alice = client(bus, "alice")
    await alice.remember("scratch: call the lyon office", kind="scratch")
    await alice.remember("alice prefers tea")
    policy = settings.with_values(memory_gc_interval_s=0.1, memory_ttl="scratch=1")
    task = asyncio.create_task(sweep(service, policy))
    try:
        await asyncio.sleep(0.3)
        assert "scratch: call the lyon office" in await texts(bus, "alice")  # not yet a day old
        clock.now += 2 * DAY
        for _ in range(100):
            if "scratch: call the lyon office" not in await texts(bus, "alice"):
                break
            await asyncio.sleep(0.05)
        assert await texts(bus, "alice") == {"alice prefers tea"}
    finally:
        task.cancel()


async def test_a_bad_gc_request_is_refused_naming_the_field(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    from relaybus.memory.errors import MemoryRefused

    with pytest.raises(MemoryRefused, match=r"duplicate_score"):
        await gc(bus, dry_run=False, duplicate_score=1.5)
    with pytest.raises(MemoryRefused, match=r"cap"):
        await gc(bus, dry_run=False, cap=-1)


def test_a_malformed_ttl_policy_is_a_config_error_naming_the_variable(settings: Settings) -> None:
    from relaybus.memory.gc import policy_from

    with pytest.raises(ConfigError, match="RELAYBUS_MEMORY_TTL 'scratch' must be KIND=DAYS"):
        policy_from(settings.with_values(memory_ttl="scratch"))
