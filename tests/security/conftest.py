"""A secured stack as a user gets it (`relaybus up`, authentication on by default), the agents
of tests/runtime_agents.py on their own NATS keys, and a hostile agent's connection."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaybus.bus import Bus, Settings
from relaybus.services.identity.client import IdentityClient, write_agent_key
from relaybus.services.identity.natsconfig import inbox_prefix, nkey_path, write_nkey

from ..conftest import ROOT
from ..test_cli import relaybus, relaybus_env

# name → (scopes, handoff_to); "mallory" is the hostile agent: registered, its own NATS key,
# allowed to call fanout and approver (so it may publish to their task subjects, under its name)
POLICY: dict[str, tuple[list[str], list[str]]] = {
    "fanout": (["memory"], ["child"]),
    "child": (["memory"], []),
    "approver": ([], []),
    "sleeper": ([], []),
    "mallory": ([], ["fanout", "approver", "child"]),
}
USER = "alice"


@dataclass
class SecureStack:
    home: Path
    settings: Settings  # the operator's: from the stack record under home
    token: str
    procs: list[subprocess.Popen[bytes]]

    def start_agent(self, spec: str) -> None:
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "relaybus.cli", "agent", "run", spec],
                cwd=ROOT,
                env=relaybus_env(self.home, RELAYBUS_IDENTITY="1", PYTHONPATH=_pythonpath()),
                stdin=subprocess.DEVNULL,
            )
        )

    def hostile(self, name: str = "mallory") -> Bus:
        """A connection as agent `name`, on its own NATS key (what a compromised agent has)."""
        return Bus(
            self.settings,
            name=f"hostile-{name}",
            agent=name,
            connect_options={
                "nkeys_seed": str(nkey_path(self.home, name)),
                "inbox_prefix": inbox_prefix(name),
            },
        )


def _pythonpath() -> str:
    import os

    return os.pathsep.join([str(ROOT / "tests"), str(ROOT)])


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[SecureStack]:
    home = tmp_path / "home"
    up = relaybus(home, "up", "--detach", "--json", RELAYBUS_IDENTITY="1")
    assert up.returncode == 0, up.stderr
    procs: list[subprocess.Popen[bytes]] = []
    try:
        settings = Settings.from_env({"RELAYBUS_HOME": str(home), "RELAYBUS_IDENTITY": "1"})
        async with Bus(settings, name="operator") as bus:
            identity = IdentityClient(bus)
            for name, (scopes, handoff) in POLICY.items():
                key = write_agent_key(home, name)
                await identity.add_agent(
                    name, key.verify_key, scopes, handoff, write_nkey(home, name)
                )
            await identity.add_user(USER, ["memory"], [])
            token = (await identity.issue_token(USER))["token"]
        await _wait_authorized(home, len(POLICY))
        yield SecureStack(home=home, settings=settings, token=token, procs=procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert relaybus(home, "down").returncode == 0


async def _wait_authorized(home: Path, agents: int, timeout_s: float = 20.0) -> None:
    """Until the supervisor has written every agent's NATS user (it reloads the server then)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (home / "nats-auth.conf").read_text().count('"nkey"') < agents:
        if loop.time() > deadline:
            raise AssertionError("the stack did not authorize the registered agents in time")
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the reload itself
