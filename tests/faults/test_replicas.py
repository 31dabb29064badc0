"""Identity replicas: one trust root, the load shared, and a replica killed -9 under load costs
no run (the run authority, in the same process, fails over with it)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relaybus.bus import Bus, Settings, default_topology, ensure
from relaybus.services.identity.registry import Registry

from ..conftest import ROOT, child_env, wait_service
from ..fault_agents import RUN_COST
from .conftest import Fleet, assert_runs_held, register, start_pipeline, submit_run, wait_all_ended


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_values(identity=True, ledger=True, ack_wait_s=2.0, max_deliver=12)


async def instances(bus: Bus, service: str, wait_s: float = 0.5) -> list[dict[str, Any]]:
    """Every running instance's `$SRV.STATS` of micro service `service`, of this test's
    deployment (`$SRV` subjects are server-wide: other tests' services answer them too)."""
    replies: list[dict[str, Any]] = []

    async def got(msg: Any) -> None:
        stats = json.loads(msg.data)
        if (stats.get("metadata") or {}).get("prefix") == bus.subjects.prefix:
            replies.append(stats)

    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox, cb=got)
    await bus.nc.publish(f"$SRV.STATS.{service}", b"", reply=inbox)
    await asyncio.sleep(wait_s)
    await sub.unsubscribe()
    return replies


def stamps(stats: dict[str, Any]) -> int:
    return sum(e["num_requests"] for e in stats["endpoints"] if e["name"] == "stamp")


async def test_a_replica_killed_under_load_fails_no_run(
    fleet: Fleet, settings: Settings, tmp_path: Path
) -> None:
    runs = 30
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        # Given two identity replicas on one seed (the first publishes the trust root)
        fleet.add_service("identity#0", "identity")
        await wait_service(bus, "identity")
        mounted = tmp_path / "secret" / "service.seed"  # as a secret is mounted elsewhere
        mounted.parent.mkdir()
        mounted.write_bytes((settings.home / "identity" / "service.seed").read_bytes())
        fleet.add_service("identity#1", "identity", RELAYBUS_IDENTITY_SEED_FILE=str(mounted))
        fleet.add_service("ledger")
        await wait_service(bus, "ledger")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 45
        while len(await instances(bus, "relaybus-identity")) < 2:
            assert loop.time() < deadline, "the second identity replica never answered"
        user_budget = RUN_COST * runs
        token = await register(bus, settings, user_budget)
        start_pipeline(fleet, replicas=1)
        log = tmp_path / "effects"
        accepted: list[str] = []
        for wave in range(runs // 5):
            killing = None
            if wave == 3:  # When one replica is killed -9 while a wave is being stamped
                shared = await instances(bus, "relaybus-identity")
                for _ in range(100):  # bounded: both must have stamped before one dies
                    if len(shared) == 2 and all(stamps(s) > 0 for s in shared):
                        break
                    shared = await instances(bus, "relaybus-identity", wait_s=0.2)
                assert len(shared) == 2 and all(stamps(s) > 0 for s in shared), shared
                killing = loop.run_in_executor(None, fleet.kill, "identity#0")
            ids = await asyncio.gather(
                *(submit_run(bus, wave * 5 + i, log, token) for i in range(5))
            )
            assert None not in ids, "a submission found no identity replica"
            accepted.extend(i for i in ids if i is not None)
            if killing is not None:
                await killing
            await asyncio.sleep(0.3)
        records = await wait_all_ended(bus, accepted, timeout_s=90.0)
        # Then no run failed: every one completed, effects once, budgets held, audit complete
        summary = await assert_runs_held(
            bus, accepted, records, log, user_budget=user_budget, audited=True
        )
        assert summary["completed"] == runs, summary["failed"]
        assert not fleet.alive("identity#0") and fleet.alive("identity#1")
        survivors = await instances(bus, "relaybus-identity")
        assert len(survivors) == 1 and stamps(survivors[0]) > 0


def identity_replica(settings: Settings, seed_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "service", "identity"],
        env=child_env(settings, RELAYBUS_IDENTITY_SEED_FILE=str(seed_file)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_replica_never_replaces_the_trust_root(
    fleet: Fleet, settings: Settings, tmp_path: Path
) -> None:
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        fleet.add_service("identity")
        await wait_service(bus, "identity")
        registry = await Registry.open(bus)
        trusted = await registry.service_key()
        assert trusted is not None
        # When a replica starts with a seed of its own
        other = tmp_path / "other.seed"
        other.write_text("11" * 32)
        mismatch = identity_replica(settings, other)
        # Then it refuses to start, saying which seed to give it
        assert mismatch.returncode != 0
        assert "is not the trust root" in mismatch.stderr, mismatch.stderr[-2000:]
        assert "RELAYBUS_IDENTITY_SEED_FILE" in mismatch.stderr
        # and a replica with no seed at all does not mint one
        missing = tmp_path / "nowhere" / "service.seed"
        unseeded = identity_replica(settings, missing)
        assert unseeded.returncode != 0
        assert "has no seed" in unseeded.stderr, unseeded.stderr[-2000:]
        assert not missing.exists()
        # and the key every verifier trusts is still the first replica's
        assert bytes(await registry.service_key()) == bytes(trusted)  # type: ignore[arg-type]
        await wait_service(bus, "identity")
