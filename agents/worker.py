"""An agent process: its Bus, its consume loop, its events and its heartbeat in the agents bucket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

import msgspec

from bus import (
    Bus,
    Consumer,
    Delivery,
    ErrorInfo,
    Event,
    Reject,
    Settings,
    default_topology,
    ensure,
)
from bus.cli import AgentBeat
from bus.events import event_encoder
from bus.runtime import stop_on_signals

from .base import Agent, encode_result, input_decoder
from .context import Context

log = logging.getLogger("relaybus.worker")
BEAT_INTERVAL_S = 20.0


class Worker:
    """Turns deliveries of one agent's subject into `agent.handle` calls and run events."""

    def __init__(self, bus: Bus, agent: Agent) -> None:
        self.bus = bus
        self.agent = agent
        self.name = agent.name
        self.decode_input = input_decoder(agent.input_type())

    async def emit(self, event: Event) -> None:
        await self.bus.publish_bytes(
            self.bus.subjects.event(event.run_id, event.kind), event_encoder.encode(event)
        )

    async def handle(self, delivery: Delivery) -> None:
        env = delivery.envelope
        base = {
            "run_id": env.run_id,
            "sender": env.sender,
            "recipient": self.name,
            "envelope_id": env.id,
            "attempt": delivery.attempt,
        }
        await self.emit(Event(kind="started", **base))  # type: ignore[arg-type]
        ctx = Context(self.name, env, delivery.attempt)
        try:
            task = self.decode_input(env.payload)
            result = await self.agent.handle(ctx, task)
            body = encode_result(result)
        except Reject as exc:
            # Bad input or a handler's refusal fails the run now: retrying cannot help.
            await self.emit(Event(kind="failed", error=ErrorInfo.from_exception(exc), **base))  # type: ignore[arg-type]
            return
        except Exception as exc:
            if delivery.attempt < self.bus.settings.max_deliver:
                await self.emit(Event(kind="retried", error=ErrorInfo.from_exception(exc), **base))  # type: ignore[arg-type]
            raise
        await self.emit(Event(kind="completed", result=msgspec.Raw(body), **base))  # type: ignore[arg-type]


async def serve_agent(agent: Agent, settings: Settings, concurrency: int = 8) -> int:
    """Run one replica of `agent` until SIGTERM/SIGINT, then finish in-flight work and drain."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with Bus(settings, name=f"agent-{agent.name}-{os.getpid()}") as bus, agent.lifespan():
        await ensure(bus, default_topology(bus.subjects))
        worker = Worker(bus, agent)
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
            await _forget(bus, agent.name)
    log.info(
        "agent %s (pid %d) stopped after %d message(s)", agent.name, os.getpid(), consumer.processed
    )
    return 0


def _beat_key(name: str) -> str:
    return f"{name}.{socket.gethostname().replace('.', '-')}-{os.getpid()}"


async def _heartbeat(bus: Bus, name: str, concurrency: int) -> None:
    kv = await bus.js.key_value(bus.subjects.bucket("agents"))
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
    with contextlib.suppress(Exception):
        kv = await bus.js.key_value(bus.subjects.bucket("agents"))
        await kv.purge(_beat_key(name))
