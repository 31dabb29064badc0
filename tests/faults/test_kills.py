"""kill -9 of agents and services at random points over many runs, identity and ledger on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relaybus.bus import Bus, Settings, default_topology, ensure

from ..conftest import wait_service
from ..fault_agents import RUN_COST
from .conftest import (
    Fleet,
    assert_runs_held,
    chaos,
    register,
    start_pipeline,
    submit_run,
    wait_all_ended,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # a killed worker's message comes back after 2 s; enough attempts to outlive the chaos
    return settings.with_values(identity=True, ledger=True, ack_wait_s=2.0, max_deliver=12)


async def chaos_run(
    fleet: Fleet, settings: Settings, tmp_path: Path, *, runs: int, victims_of: str, seed: int
) -> None:
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        fleet.add_service("identity")
        fleet.add_service("ledger")
        await wait_service(bus, "identity")
        await wait_service(bus, "ledger")
        user_budget = RUN_COST * runs
        token = await register(bus, settings, user_budget)
        agents = start_pipeline(fleet, replicas=2)
        victims = {
            "agents": agents,
            "services": ["identity", "ledger"],
            "all": [*agents, "identity", "ledger"],
        }[victims_of]
        log = tmp_path / "effects"
        # Given runs submitted in waves while processes are killed -9 at random points
        stop = asyncio.Event()
        killer = asyncio.create_task(
            chaos(
                fleet,
                victims,
                stop,
                max_kills=25,
                max_s=40.0,
                seed=seed,
                pause_s=(0.2, 0.8),
                down_s=(0.1, 0.4),
            )
        )
        accepted: list[str] = []
        for wave in range(runs // 5):
            for i in range(5):
                run_id = await submit_run(bus, wave * 5 + i, log, token)
                if run_id is not None:
                    accepted.append(run_id)
            await asyncio.sleep(0.8)
        # When the chaos stops and every process is up again
        records = await wait_all_ended(bus, accepted, timeout_s=30.0)
        stop.set()
        await killer
        for name in fleet.procs:
            if not fleet.alive(name):
                fleet.start(name)
        records = await wait_all_ended(bus, accepted, timeout_s=90.0)
        # Then every accepted run ended, effects once, budgets held, audit complete
        summary = await assert_runs_held(
            bus, accepted, records, log, user_budget=user_budget, audited=True
        )
        assert len(accepted) == runs
        assert sum(fleet.kills.values()) >= 4, fleet.kills
        # the pipeline has no reason to fail: retries must carry every run through
        assert summary["completed"] == runs, summary["failed"]


async def test_random_agent_kills_over_many_runs(
    fleet: Fleet, settings: Settings, tmp_path: Path
) -> None:
    await chaos_run(fleet, settings, tmp_path, runs=30, victims_of="agents", seed=7)


async def test_random_identity_and_ledger_kills_over_many_runs(
    fleet: Fleet, settings: Settings, tmp_path: Path
) -> None:
    await chaos_run(fleet, settings, tmp_path, runs=20, victims_of="services", seed=11)


@pytest.mark.slow
async def test_random_kills_of_everything_over_many_runs(
    fleet: Fleet, settings: Settings, tmp_path: Path
) -> None:
    await chaos_run(fleet, settings, tmp_path, runs=60, victims_of="all", seed=23)
