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

from bus import Bus, ConfigError, Consumer, Settings, default_topology, ensure
from bus.cli import AgentBeat
from bus.kv import Bucket
from bus.runtime import stop_on_signals
from bus.telemetry import Telemetry
from services.identity.natsconfig import inbox_prefix, nkey_path

from .base import Agent
from .worker import Worker

log = logging.getLogger("relaybus.worker")
BEAT_INTERVAL_S = 20.0


async def serve_agent(
    agent: Agent, settings: Settings, concurrency: int = 8, metrics_port: int | None = None
) -> int:
    """Run one replica of `agent` until SIGTERM/SIGINT, then finish in-flight work and drain."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(agent.name)}
    if settings.nats_auth:
        path = nkey_path(settings.home.resolve(), agent.name)
        if not path.exists():
            raise ConfigError(
                f"RELAYBUS_NATS_AUTH is on but {path} is missing: `relaybus identity agent add {agent.name}`"
            )
        options["nkeys_seed"] = str(path)
    telemetry = Telemetry(f"agent-{agent.name}", settings, metrics_port)
    bus_cm = Bus(settings, name=f"agent-{agent.name}-{os.getpid()}", connect_options=options)
    with telemetry:
        async with bus_cm as bus, agent.lifespan():
            consumer = await _consume(bus, agent, concurrency, stop)
    log.info(
        "agent %s (pid %d) stopped after %d message(s)", agent.name, os.getpid(), consumer.processed
    )
    return 0


async def _consume(bus: Bus, agent: Agent, concurrency: int, stop: asyncio.Event) -> Consumer:
    await ensure(bus, default_topology(bus.subjects, bus.settings.stream_replicas))
    worker = await Worker.open(bus, agent)
    if worker.gate is not None:
        log.info("identity on: chains verified, tool calls checked for %s", agent.name)
    control = await bus.subscribe(f"{bus.subjects.prefix}.control.*", worker.on_control)
    consumer = Consumer(bus, agent.name, worker.handle, concurrency=concurrency)
    beat = asyncio.create_task(_heartbeat(bus, agent.name, concurrency))
    log.info(
        "agent %s (pid %d) consuming %s", agent.name, os.getpid(), bus.subjects.task(agent.name)
    )
    try:
        await consumer.run(stop)
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
        await kv.put(_beat_key(name), msgspec.json.encode(beat))
        await asyncio.sleep(BEAT_INTERVAL_S)


async def _forget(bus: Bus, name: str) -> None:
    """Best effort on the way out: a server already gone must not hold up the exit (the
    presence entry expires with the bucket's TTL anyway)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            kv = await Bucket.open(bus, bus.subjects.bucket("presence"))
            await kv.delete(_beat_key(name))
