"""NATS least privilege: a server running the generated authorization block, agents on nkeys."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus.agents.submit import submit
from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.bus.streams import ensure_agent_consumers
from relaybus.services.identity.messages import AgentRecord
from relaybus.services.identity.natsconfig import authorization_block, write_nkey

from ..conftest import Spawn, service_process, wait_service


@pytest.fixture
def secured(tmp_path: Path, prefix: str) -> Iterator[tuple[NatsServer, Settings]]:
    home = tmp_path / "home"
    settings = Settings.from_env(
        {}, prefix=prefix, home=home, ack_wait_s=5.0, max_deliver=2, nats_auth=True
    )
    agents = [
        AgentRecord(name="echo", public_key="", nkey=write_nkey(home, "echo")),
        AgentRecord(name="i_rogue", public_key="", nkey=write_nkey(home, "i_rogue")),
        AgentRecord(name="i_writer", public_key="", nkey=write_nkey(home, "i_writer")),
    ]
    conf = tmp_path / "auth.conf"
    conf.write_text(authorization_block(Bus(settings).subjects, agents, {"admin": "s3cret"}))
    with NatsServer(tmp_path / "store", config_file=conf) as server:
        yield server, settings.model_copy(update={"nats_url": server.url})


@pytest.fixture
def spawn(secured: tuple[NatsServer, Settings]) -> Iterator[Spawn]:  # type: ignore[override]
    import signal
    import subprocess
    import sys

    from ..conftest import ROOT, child_env

    procs: list[subprocess.Popen[bytes]] = []

    def start(spec: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", "agent", "run", spec, *args],
            env=child_env(secured[1], **extra),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(20)


async def test_an_agent_runs_on_its_nkey_and_cannot_publish_outside_its_permissions(
    secured: tuple[NatsServer, Settings], spawn: Spawn
) -> None:
    with contextlib.ExitStack() as stack:
        await _agent_runs_on_its_nkey(secured, spawn, stack)


async def _agent_runs_on_its_nkey(
    secured: tuple[NatsServer, Settings], spawn: Spawn, stack: contextlib.ExitStack
) -> None:
    server, settings = secured
    admin = settings.model_copy(
        update={"nats_url": server.url.replace("nats://", "nats://admin:s3cret@")}
    )
    async with Bus(admin, name="admin") as bus:
        await ensure(bus, default_topology(bus.subjects))
        for name in ("echo", "i_rogue"):  # what the identity service does at registration
            await ensure_agent_consumers(bus, name)
        authority = stack.enter_context(service_process(admin, "identity"))  # run records
        del authority
        await wait_service(bus, "identity")
        # an ordinary agent does its whole job under least privilege
        spawn("relaybus.agents.demo.echo:Echo")
        ok = await submit(bus, "echo", b'{"x": 1}', wait=True, timeout_s=40)
        assert ok.status == "completed" and ok.result == {"x": 1}, ok
        # a hostile agent publishing to another agent's subject is refused by the server
        spawn("identity_agents:Rogue")
        bad = await submit(bus, "i_rogue", json.dumps({}).encode(), wait=True, timeout_s=60)
        assert bad.status == "failed"
        assert (
            bad.error is not None and "PermissionViolation" in bad.error and "i_writer" in bad.error
        )
        info = await bus.js.stream_info(
            bus.subjects.stream("TASKS"), subjects_filter=bus.subjects.task("i_writer")
        )
        assert not (info.state.subjects or {}).get(bus.subjects.task("i_writer"))  # never delivered
