"""The memory service killed -9 and restarted while runs remember and recall through it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from relaybus.agents.submit import submit
from relaybus.bus import Bus, Settings, default_topology, ensure, rpc

from ..conftest import wait_service
from .conftest import Fleet, chaos, describe_run, wait_all_ended


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ack_wait_s": 2.0, "max_deliver": 12})


async def test_memory_service_killed_while_runs_remember_and_recall(
    fleet: Fleet, settings: Settings, tmp_path: Path
) -> None:
    runs = 20
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        fleet.add_service("memory")
        await wait_service(bus, "memory", timeout_s=30)
        fleet.add_agent("rememberer#0", "runtime_agents:Rememberer")
        fleet.add_agent("rememberer#1", "runtime_agents:Rememberer")
        # Given runs that each remember a fact and recall it, while the memory service is
        # killed -9 and restarted on the same store
        stop = asyncio.Event()
        killer = asyncio.create_task(
            chaos(fleet, ["memory"], stop, max_kills=6, max_s=25.0, seed=5, pause_s=(1.0, 2.0))
        )
        facts = {}
        for i in range(runs):
            fact = f"supplier number {i} ships {['bolts', 'gears', 'valves', 'pumps'][i % 4]}"
            outcome = await submit(
                bus, "rememberer", json.dumps({"fact": fact}).encode(), sender="user:alice"
            )
            facts[outcome.run_id] = fact
            await asyncio.sleep(0.25)
        records = await wait_all_ended(bus, list(facts), timeout_s=25.0)
        stop.set()
        await killer
        if not fleet.alive("memory"):
            fleet.start("memory")
        records = await wait_all_ended(bus, list(facts), timeout_s=90.0)
        # Then every run completed and recalled its own fact, and each fact is stored once
        assert fleet.kills["memory"] >= 2, fleet.kills
        for run_id, fact in facts.items():
            record = records[run_id]
            assert record.status == "completed", await describe_run(bus, run_id, record)
            assert record.result["recalled"] == [fact], record.result
        await wait_service(bus, "memory", timeout_s=30)
        stats = await rpc.call(bus, f"{bus.subjects.prefix}.svc.memory.admin_stats", {})
        assert stats["memories"] == runs, stats
