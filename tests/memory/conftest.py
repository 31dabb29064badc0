"""A memory service in the test process over the real bus, with a controllable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relaybus.bus import Bus
from relaybus.bus.kv import Bucket
from relaybus.memory.client import MemoryClient
from relaybus.memory.edge import EdgeStore
from relaybus.memory.embed import LexicalEmbedder
from relaybus.memory.messages import Caller
from relaybus.memory.service import MemoryService, memory_micro
from relaybus.memory.sessions import Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def served(bus: Bus, tmp_path: Path) -> AsyncIterator[tuple[MemoryService, Clock]]:
    clock = Clock()
    sessions = Sessions(await Bucket.open(bus, bus.subjects.bucket("sessions")))
    service = MemoryService(
        EdgeStore(tmp_path / "memory"), LexicalEmbedder(), clock=clock, sessions=sessions
    )
    await service.start()
    async with memory_micro(bus, service):  # as `relaybus service memory` answers
        yield service, clock
    await service.store.close()


def client(bus: Bus, user: str) -> MemoryClient:
    return MemoryClient(bus, Caller(run_id="RUN1", agent="research", principal=f"user:{user}"))
