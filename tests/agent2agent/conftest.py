"""A secured stack (`relaybus up`, identity on) with the A2A test agents registered, users alice
and bob with tokens, and `relaybus a2a serve` in-process on a free loopback port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relaybus.agents.a2a.cli import Served, serving
from relaybus.bus import Bus, Settings
from relaybus.client import Client
from relaybus.services.identity.client import IdentityClient, write_agent_key
from relaybus.services.identity.natsconfig import write_nkey

from ..conftest import ROOT, TESTS
from ..security.conftest import _wait_authorized
from ..test_cli import relaybus, relaybus_env

POLICY: dict[str, list[str]] = {"echo": [], "approver": [], "delegator": ["a2a"]}


@dataclass
class A2aStack:
    home: Path
    bus: Bus  # the operator's connection, which the A2A server uses
    tokens: dict[str, str]
    served: Served
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_agent(self, spec: str, **env: str) -> None:
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "relaybus.cli", "agent", "run", spec],
                cwd=ROOT,
                env=relaybus_env(
                    self.home, RELAYBUS_IDENTITY="1", PYTHONPATH=f"{TESTS}:{ROOT}", **env
                ),
                stdin=subprocess.DEVNULL,
            )
        )

    def client(self, user: str) -> Client:
        return Client(self.bus.settings, user=user, token=self.tokens[user])

    def agent_url(self, agent: str) -> str:
        return f"{self.served.url}/agents/{agent}"


@pytest.fixture
async def a2a_stack(tmp_path: Path) -> AsyncIterator[A2aStack]:
    home = tmp_path / "home"
    up = relaybus(home, "up", "--detach", "--json", RELAYBUS_IDENTITY="1")
    assert up.returncode == 0, up.stderr
    stack: A2aStack | None = None
    try:
        settings = Settings.from_env({"RELAYBUS_HOME": str(home), "RELAYBUS_IDENTITY": "1"})
        async with Bus(settings, name="operator") as bus:
            identity = IdentityClient(bus)
            for name, scopes in POLICY.items():
                key = write_agent_key(home, name)
                await identity.add_agent(name, key.verify_key, scopes, [], write_nkey(home, name))
            tokens = {}
            for user in ("alice", "bob"):
                await identity.add_user(user, ["a2a"], [])
                tokens[user] = (await identity.issue_token(user))["token"]
            await _wait_authorized(home, len(POLICY))
            async with serving(bus, list(POLICY), "127.0.0.1", 0) as served:
                stack = A2aStack(home=home, bus=bus, tokens=tokens, served=served)
                yield stack
    finally:
        for proc in stack.procs if stack else []:
            if proc.poll() is None:
                proc.terminate()
        for proc in stack.procs if stack else []:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert relaybus(home, "down").returncode == 0
