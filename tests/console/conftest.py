"""One full stack for the console tests: nats-server, the identity and ledger services, the
console test agents (identity and ledger on), and two `relaybus console` processes — one on
loopback (the local operator) and one on 0.0.0.0 (user tokens required). Every process is a
real subprocess, stopped by its pid afterwards."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relaybus.agents.demo.procs import Processes
from relaybus.agents.submit import submit
from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.services.identity.client import IdentityClient, write_agent_key
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.ops import Budget

from ..conftest import ROOT, child_env, wait_service

ROLE_SCOPES = ["lookup", "review", "notes/send:recipient_domain=team.example", "publish"]
POLICY: dict[str, tuple[list[str], list[str]]] = {
    "c_plan": (["lookup", "review", "notes/send", "publish"], ["c_work", "c_review", "c_publish"]),
    "c_work": (["lookup"], []),
    "c_review": (["review", "notes/send"], []),
    "c_publish": (["publish"], []),
    "c_flaky": ([], []),
    "c_park": (["lookup"], []),
}
AGENTS = ["Planner", "Worker", "Reviewer", "Publisher", "Flaky", "Parker"]


@dataclass
class Stack:
    settings: Settings
    tokens: dict[str, str]  # user → API token
    local_url: str  # the console on 127.0.0.1 (no token needed)
    remote_url: str  # the console on 0.0.0.0, reached through 127.0.0.1 (tokens required)
    home: Path

    def bus(self) -> Bus:
        return Bus(self.settings, name="console-test")

    async def publish(self, user: str, agent: str, task: dict[str, Any], **kw: Any) -> str:
        """Submit a run as `user` (with its token) without waiting; returns the run id."""
        async with self.bus() as bus:
            outcome = await submit(
                bus,
                agent,
                json.dumps(task).encode(),
                sender=f"user:{user}",
                token=self.tokens[user],
                **kw,
            )
        return outcome.run_id


async def _register(settings: Settings) -> dict[str, str]:
    async with Bus(settings, name="console-setup") as bus:
        await ensure(bus, default_topology(bus.subjects))
        await wait_service(bus, "identity")
        await wait_service(bus, "ledger")
        identity = IdentityClient(bus)
        home = settings.home.resolve()
        for name, (scopes, handoff) in POLICY.items():
            await identity.add_agent(name, write_agent_key(home, name).verify_key, scopes, handoff)
        await identity.add_role("analyst", ROLE_SCOPES)
        tokens = {}
        for user in ("alice", "bob"):
            await identity.add_user(user, [], ["analyst"])
            tokens[user] = (await identity.issue_token(user))["token"]
        # carol reviews alice's runs (human review, agents/review.py), and submits none
        await identity.add_user("carol", ["evaluation/review:principal=alice"], [])
        tokens["carol"] = (await identity.issue_token("carol"))["token"]
        ledger = LedgerClient(bus)
        await ledger.set_budget(
            "budget-alice", Budget(level="user:alice", limit=5_000_000, period="monthly")
        )
        await ledger.set_budget("budget-work", Budget(level="agent:c_work", limit=1_000_000))
        return tokens


@pytest.fixture(scope="package")
def stack(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("console") / "home"
    settings = Settings.from_env(
        {},
        nats_url=nats_server.url,
        prefix="c" + secrets.token_hex(4),
        home=home,
        ack_wait_s=5.0,
        max_deliver=3,
        identity=True,
        ledger=True,
        nats_auth=False,  # the shared test server runs without authentication
    )
    env = child_env(settings)
    procs = Processes(home.parent / "logs")
    try:
        procs.start("identity", env, "service", "identity")
        procs.start("ledger", env, "service", "ledger")
        tokens = asyncio.run(_register(settings))
        for cls in AGENTS:
            procs.start(cls.lower(), env, "agent", "run", f"tests.console.console_agents:{cls}")
        console_env = {**env, "PYTHONPATH": str(ROOT)}
        local = procs.start_server("console-local", "console_url", "console", env=console_env)
        remote = procs.start_server(
            "console-remote",
            "console_url",
            "console",
            "--host",
            "0.0.0.0",
            env=console_env,
        )
        yield Stack(
            settings=settings,
            tokens=tokens,
            local_url=local,
            remote_url=remote.replace("0.0.0.0", "127.0.0.1"),
            home=home,
        )
    finally:
        procs.stop_all()
