"""Shared fixtures: a real nats-server per test session, a unique prefix per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats.js.errors
import pytest

from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.bus.server import cluster_specs, free_port

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return "t" + secrets.token_hex(4)


@pytest.fixture
def settings(nats_server: NatsServer, prefix: str, tmp_path: Path) -> Settings:
    return Settings.from_env(
        {},
        nats_url=nats_server.url,
        prefix=prefix,
        home=tmp_path / "home",
        ack_wait_s=5.0,
        max_deliver=3,
        nats_auth=False,  # the shared test server runs without authentication (tests/security
    )  # starts secured stacks of its own)


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    async with Bus(settings, name="test") as connected:
        await ensure(connected, default_topology(connected.subjects))
        yield connected


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBUS_")}
    env.update(settings.env())
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn(settings: Settings) -> Iterator[Spawn]:
    """Start `relaybus agent run SPEC` processes; each is stopped by its pid at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(spec: str, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", "agent", "run", spec, *args],
            env=child_env(settings, **extra_env),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def consuming(bus: Bus, *agents: str, timeout_s: float = 45.0) -> None:
    """Wait (bounded) until each agent has a worker pulling its task queue, so a test that times
    something from submission does not also time a process start on a loaded machine."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for agent in agents:
        stream, durable = bus.subjects.stream("TASKS"), bus.subjects.durable(agent)
        while True:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                if (await bus.js.consumer_info(stream, durable)).num_waiting:
                    break
            if loop.time() > deadline:
                raise AssertionError(f"agent {agent} has no worker pulling after {timeout_s}s")
            await asyncio.sleep(0.05)


async def wait_for(
    predicate: Callable[[], object], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """Wait (bounded) for a condition that has no event to await, e.g. a file another process writes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """A 3-node JetStream cluster with routes on loopback; each node keeps its client port, so a
    killed node started again (`node.start()`) is found at the same URL."""
    nodes = [
        NatsServer(tmp_path / spec.server_name, port=free_port(), cluster=spec)
        for spec in cluster_specs("c" + secrets.token_hex(3))
    ]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@contextlib.contextmanager
def service_process(settings: Settings, name: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`relaybus service NAME` as a real process, stopped by its pid afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "relaybus.cli", "service", name, *args],
        env=child_env(settings),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_service(bus: Bus, name: str, timeout_s: float = 45.0) -> None:
    """Wait (bounded) until the service answers anything on `<prefix>.svc.<name>.ping`."""
    from relaybus.bus import RelayError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            await bus.request(bus.subjects.service(name, "ping"), b"{}", timeout_s=0.5)
            return
        except RelayError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"service {name} did not answer within {timeout_s}s")
