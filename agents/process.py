"""An agent process: its bus, its worker, its consume loop, its heartbeat; SIGTERM drains it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import msgspec

from relaybus.bus import (
    Bus,
    ConfigError,
    ConnectionFailed,
    Consumer,
    RetryPolicy,
    Settings,
    default_topology,
    ensure,
)
from relaybus.bus.cli import AgentBeat
from relaybus.bus.kv import Bucket
from relaybus.bus.runtime import settle_heap, stop_on_signals
from relaybus.bus.stack import read_stack
from relaybus.bus.streams import ensure_agent_consumers, timer_consumer
from relaybus.bus.telemetry import Telemetry
from relaybus.services.identity.natsconfig import inbox_prefix, nkey_path

from .base import Agent
from .worker import Worker

log = logging.getLogger("relaybus.worker")
BEAT_INTERVAL_S = 20.0
AUTH_WAIT_S = 10.0


async def serve_agent(
    agent: Agent,
    settings: Settings,
    concurrency: int = 8,
    metrics_port: int | None = None,
    retry: RetryPolicy | None = None,
) -> int:
    """Run one replica of `agent` until SIGTERM/SIGINT, then finish in-flight work and drain."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    settle_heap()
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(agent.name)}
    path = nkey_path(settings.home.resolve(), agent.name)
    if settings.nats_auth and not path.exists():
        await register_on_first_run(agent, settings)
    if path.exists():
        options["nkeys_seed"] = str(path)
    telemetry = Telemetry(f"agent-{agent.name}", settings, metrics_port)
    with telemetry:
        async with await _connect(settings, agent.name, options) as bus, agent.lifespan():
            bus.stop_when_lost(stop)
            consumer = await _consume(bus, agent, concurrency, stop, retry=retry)
    log.info(
        "agent %s (pid %d) stopped after %d message(s)", agent.name, os.getpid(), consumer.processed
    )
    return 1 if bus.lost else 0


async def _connect(settings: Settings, name: str, options: dict[str, Any]) -> Bus:
    """The agent's connection, as its own NATS user. A freshly registered agent may connect
    before the server has reloaded its permissions: refusals are retried for a few seconds."""
    deadline = time.monotonic() + AUTH_WAIT_S
    while True:
        bus = Bus(settings, name=f"agent-{name}-{os.getpid()}", connect_options=options, agent=name)
        try:
            await bus.__aenter__()
        except ConnectionFailed as exc:
            if "credentials" not in str(exc) or time.monotonic() > deadline:
                raise ConnectionFailed(
                    f"{exc}; is agent {name} registered (`relaybus identity agent add {name}`) "
                    f"with the NATS key in {nkey_path(settings.home.resolve(), name)}?"
                ) from None
            await asyncio.sleep(0.5)
            continue
        await bus.__aexit__(None, None, None)
        return Bus(
            settings, name=f"agent-{name}-{os.getpid()}", connect_options=options, agent=name
        )


async def register_on_first_run(agent: Agent, settings: Settings) -> None:
    """The quick start: an agent run against the local stack (whose operator credentials are
    under RELAYBUS_HOME) registers itself, with the scopes and handoffs its class declares.
    Anywhere else, registration is the operator's step: `relaybus identity agent add`."""
    from relaybus.services.identity.client import IdentityClient, agent_key_path, write_agent_key
    from relaybus.services.identity.natsconfig import write_nkey

    home = settings.home.resolve()
    if not settings.nats_url and read_stack(settings) is None:
        raise ConfigError(
            f"no relaybus stack runs under {home}: start one with `relaybus up --detach` (an "
            f"agent run against it registers {agent.name} itself), or point RELAYBUS_NATS_URL "
            "at your NATS server"
        )
    if settings.nats_url:
        raise ConfigError(
            f"agent {agent.name} has no NATS key ({nkey_path(home, agent.name)}): register it "
            f"with `relaybus identity agent add {agent.name} --scope … --handoff-to …`, or set "
            "RELAYBUS_NATS_AUTH=0 against a development server without authentication"
        )
    async with Bus(settings, name="relaybus-register") as bus:
        identity = IdentityClient(bus)
        known = {a["name"] for a in await identity.list_agents()}
        if agent.name in known:
            raise ConfigError(
                f"agent {agent.name} is registered but its NATS key "
                f"{nkey_path(home, agent.name)} is missing: register it again with "
                f"`relaybus identity agent add {agent.name} …` under this RELAYBUS_HOME"
            )
        key = write_agent_key(home, agent.name)
        nkey = write_nkey(home, agent.name)
        await identity.add_agent(
            agent.name, key.verify_key, list(agent.scopes), list(agent.handoff_to), nkey
        )
    assert agent_key_path(home, agent.name).exists()
    log.info("registered agent %s on the local stack (its keys are under %s)", agent.name, home)


async def run_in_process(
    agent: Agent,
    settings: Settings,
    concurrency: int,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve `agent` inside this event loop until `stop` is set (relaybus.testing, embedding
    apps): no signal handlers, no telemetry exporters; `ready` is set once it consumes."""
    async with Bus(settings, name=f"agent-{agent.name}", agent=agent.name) as bus:
        async with agent.lifespan():
            await _consume(bus, agent, concurrency, stop, ready)


async def _consume(
    bus: Bus,
    agent: Agent,
    concurrency: int,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    retry: RetryPolicy | None = None,
) -> Consumer:
    if not bus.settings.nats_auth:  # under authentication `up` and the identity service
        await ensure(bus, default_topology(bus.subjects, bus.settings.stream_replicas))
        await ensure_agent_consumers(bus, agent.name)  # provision; an agent only reads its own
    worker = await Worker.open(bus, agent)
    if retry is not None:  # the command line's, over the class's
        worker.retry = retry
    if worker.gate is not None:
        log.info("identity on: chains verified, tool calls checked for %s", agent.name)
    control = await bus.subscribe_subjects(bus.subjects.controls_all(), worker.on_control)
    consumer = Consumer(
        bus,
        agent.name,
        worker.handle,
        concurrency=concurrency,
        retry=worker.retry,
        on_dead_letter=worker.dead_lettered,
    )
    timers = Consumer(
        bus,
        agent.name,
        worker.handle,
        concurrency=concurrency,
        spec=timer_consumer(bus.subjects, agent.name, bus.settings.ack_wait_s),
    )
    beat = asyncio.create_task(_heartbeat(bus, agent.name, concurrency))
    log.info(
        "agent %s (pid %d) consuming %s", agent.name, os.getpid(), bus.subjects.task(agent.name)
    )
    if ready is not None:
        ready.set()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(consumer.run(stop))
            group.create_task(timers.run(stop))
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        await control.unsubscribe()
        if worker.gate is not None:
            await worker.gate.close()
        await worker.close()
        await _forget(bus, agent.name)
    return consumer


def _beat_key(name: str) -> str:
    return f"{name}.{socket.gethostname().replace('.', '-')}-{os.getpid()}"


async def _heartbeat(bus: Bus, name: str, concurrency: int) -> None:
    kv = await Bucket.open(bus, bus.subjects.bucket("presence"))
    beat = AgentBeat(
        name=name,
        pid=os.getpid(),
        host=socket.gethostname(),
        concurrency=concurrency,
        started=time.time(),
    )
    while True:
        beat = msgspec.structs.replace(beat, beat_at=time.time(), interval_s=BEAT_INTERVAL_S)
        await kv.put(_beat_key(name), msgspec.json.encode(beat))
        await asyncio.sleep(BEAT_INTERVAL_S)


async def _forget(bus: Bus, name: str) -> None:
    """Best effort on the way out: a server already gone must not hold up the exit (the
    presence entry expires with the bucket's TTL anyway)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            kv = await Bucket.open(bus, bus.subjects.bucket("presence"))
            await kv.delete(_beat_key(name))
