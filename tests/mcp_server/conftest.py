"""A stack with identity on (a real identity service, the test agents as processes) and
`relaybus mcp serve` as a real process in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from relaybus.bus import Bus, Settings, default_topology, ensure
from relaybus.services.identity.client import IdentityClient, write_agent_key

from ..conftest import ROOT, Spawn, child_env, consuming, service_process, wait_service

AGENTS = {"mcp_greet": "Greeter", "mcp_slow": "Slow"}
SERVE = [sys.executable, "-m", "relaybus.cli", "mcp", "serve"]
OFFERED = ["--agent", "mcp_server_agents:Greeter", "--agent", "mcp_slow"]


@dataclass
class Stack:
    bus: Bus
    settings: Settings
    tokens: dict[str, str]  # user → API token


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_values(identity=True)


@pytest.fixture
def identity_service(settings: Settings) -> Iterator[None]:
    with service_process(settings, "identity"):
        yield


@pytest.fixture
async def stack(settings: Settings, identity_service: None, spawn: Spawn) -> AsyncIterator[Stack]:
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        await wait_service(bus, "identity")
        identity = IdentityClient(bus)
        home = settings.home.resolve()
        for name in AGENTS:
            await identity.add_agent(name, write_agent_key(home, name).verify_key, [], [])
        tokens = {}
        for user in ("alice", "bob"):
            await identity.add_user(user, [], [])
            tokens[user] = (await identity.issue_token(user))["token"]
        for spec in AGENTS.values():
            spawn(f"mcp_server_agents:{spec}", RELAYBUS_IDENTITY="1")
        await consuming(bus, *AGENTS)
        yield Stack(bus=bus, settings=settings, tokens=tokens)


@contextlib.asynccontextmanager
async def serving(settings: Settings, *args: str) -> AsyncIterator[str]:
    """`relaybus mcp serve ARGS --http 127.0.0.1:0` as a process; its printed URL."""
    proc = await asyncio.create_subprocess_exec(
        *SERVE,
        *args,
        "--http",
        "127.0.0.1:0",
        env=child_env(settings),
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        found = re.search(r"(http://127\.0\.0\.1:\d+/mcp)", line)
        assert found, f"relaybus mcp serve printed {line!r} (exit {proc.returncode})"
        yield found.group(1)
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def mcp_url(stack: Stack) -> AsyncIterator[str]:
    async with serving(stack.settings, *OFFERED, "--wait", "60") as url:
        yield url
