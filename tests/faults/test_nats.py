"""The NATS layer under runs in flight: a server restart, and a 3-node cluster losing nodes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest

from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.bus.server import free_port

from ..conftest import wait_service
from ..fault_agents import RUN_COST
from .conftest import (
    Fleet,
    assert_runs_held,
    register,
    start_pipeline,
    submit_run,
    wait_all_ended,
)


@pytest.fixture
async def fleet_for(request: pytest.FixtureRequest) -> AsyncIterator[list[Fleet]]:
    fleets: list[Fleet] = []
    try:
        yield fleets
    finally:
        for fleet in fleets:
            fleet.stop()


def fault_settings(url: str, tmp_path: Path, **extra: object) -> Settings:
    return Settings.from_env(
        {},
        nats_url=url,
        prefix="f" + secrets.token_hex(3),
        home=tmp_path / "home",
        identity=True,
        ledger=True,
        nats_auth=False,  # a bare test server (tests/security runs secured stacks)
        ack_wait_s=2.0,
        max_deliver=12,
        **extra,
    )


async def start_stack(bus: Bus, fleet: Fleet, settings: Settings, runs: int) -> str:
    await ensure(bus, default_topology(bus.subjects, settings.stream_replicas))
    fleet.add_service("identity")
    fleet.add_service("ledger")
    await wait_service(bus, "identity", timeout_s=30)
    await wait_service(bus, "ledger", timeout_s=30)
    token = await register(bus, settings, RUN_COST * runs)
    start_pipeline(fleet, replicas=1)
    return token


async def submit_many(bus: Bus, runs: int, log: Path, token: str, first: int = 0) -> list[str]:
    accepted = []
    for i in range(first, first + runs):
        run_id = await submit_run(bus, i, log, token)
        if run_id is not None:
            accepted.append(run_id)
    return accepted


async def test_nats_server_restart_mid_run(tmp_path: Path, fleet_for: list[Fleet]) -> None:
    port = free_port()
    server = NatsServer(tmp_path / "nats", port=port).start()
    try:
        settings = fault_settings(server.url, tmp_path)
        fleet = Fleet(settings)
        fleet_for.append(fleet)
        log = tmp_path / "effects"
        async with Bus(settings, name="test") as bus:
            token = await start_stack(bus, fleet, settings, runs=30)
            # Given 15 runs accepted and in flight
            accepted = await submit_many(bus, 15, log, token)
            await asyncio.sleep(0.3)
            # When nats-server is killed -9 and comes back on the same port and store
            server.kill()
            await asyncio.sleep(1.5)
            server = NatsServer(tmp_path / "nats", port=port).start()
            accepted += await submit_many(bus, 15, log, token, first=15)
            # Then every run accepted before and after the outage completes, effects once
            records = await wait_all_ended(bus, accepted, timeout_s=90.0)
            summary = await assert_runs_held(
                bus, accepted, records, log, user_budget=RUN_COST * 30, audited=True
            )
            assert len(accepted) == 30
            assert summary["completed"] == 30, summary["failed"]
    finally:
        server.stop()


def restart(node: NatsServer) -> None:
    node.start()


async def wait_agents_consuming(bus: Bus, timeout_s: float = 60.0) -> None:
    from relaybus.agents.submit import has_consumer

    from ..fault_agents import SPECS

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for agent in SPECS:
        while not await has_consumer(bus, agent):
            assert loop.time() < deadline, f"agent {agent} never started consuming"
            await asyncio.sleep(0.2)


async def wait_all_replicas_current(bus: Bus, prefix: str, timeout_s: float = 60.0) -> None:
    """Until every stream of this deployment has a leader and all its followers caught up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        lagging = []
        try:
            infos = await bus.js.streams_info()
        except (nats.errors.TimeoutError, nats.js.errors.APIError) as error:
            # the meta leader is being elected again while the returning node rejoins
            lagging = [f"stream list unanswered: {error!r}"]
            await asyncio.sleep(0.5)
            continue
        for info in infos:
            name = info.config.name or ""
            if prefix.upper() not in name.upper():
                continue
            replicas = (info.cluster.replicas if info.cluster else None) or []
            if not info.cluster or not info.cluster.leader or len(replicas) < 2:
                lagging.append(name)
            elif any(not r.current or r.offline for r in replicas):
                lagging.append(name)
        if not lagging:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"streams still catching up after {timeout_s}s: {lagging}")


@pytest.mark.slow
async def test_cluster_node_killed_mid_run_then_another_after_it_returns(
    tmp_path: Path, cluster: list[NatsServer], fleet_for: list[Fleet]
) -> None:
    # Given a 3-node cluster with R3 streams and buckets, every process given all three URLs
    urls = ",".join(node.url for node in cluster)
    settings = fault_settings(urls, tmp_path, stream_replicas=3)
    fleet = Fleet(settings)
    fleet_for.append(fleet)
    log = tmp_path / "effects"
    async with Bus(settings, name="test") as bus:
        token = await start_stack(bus, fleet, settings, runs=45)
        await wait_agents_consuming(bus)
        tasks = await bus.js.stream_info(bus.subjects.stream("TASKS"))
        assert tasks.config.num_replicas == 3
        leader = next(
            n
            for n in cluster
            if n.cluster and tasks.cluster and n.cluster.server_name == tasks.cluster.leader
        )
        accepted = await submit_many(bus, 15, log, token)
        # When the TASKS stream's leader is killed -9 mid-run
        leader.kill()
        accepted += await submit_many(bus, 15, log, token, first=15)
        # and comes back; once it caught up, another node is killed
        await asyncio.to_thread(restart, leader)
        await wait_all_replicas_current(bus, settings.prefix)
        other = next(n for n in cluster if n is not leader)
        other.kill()
        accepted += await submit_many(bus, 15, log, token, first=30)
        # Then every accepted run completes exactly once, budgets held, audit complete
        records = await wait_all_ended(bus, accepted, timeout_s=120.0)
        summary = await assert_runs_held(
            bus, accepted, records, log, user_budget=RUN_COST * 45, audited=True
        )
        assert len(accepted) == 45
        assert summary["completed"] == 45, summary["failed"]
