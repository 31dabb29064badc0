"""`relaybus.bus.micro`: request handlers served as a NATS micro service answer exactly as
`Bus.serve` did, and are seen by plain `$SRV` requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from relaybus.bus import Bus, ConfigError, Settings
from relaybus.bus.micro import Endpoint, MicroService
from relaybus.bus.rpc import answer


@pytest.fixture
async def plain(settings: Settings) -> AsyncIterator[NATS]:
    nc = await nats.connect(settings.nats_url, connect_timeout=5)
    yield nc
    await nc.drain()


class Toy:
    """Dispatches on the last subject token, as the services do."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.finished: list[str] = []

    async def handle(self, subject: str, data: bytes) -> bytes:
        op = subject.rsplit(".", 1)[1]

        async def work() -> object:
            if op == "echo":
                return json.loads(data)
            if op == "crash":
                raise ZeroDivisionError("a bug, not a refusal")
            if op == "slow":
                self.started.set()
                await self.release.wait()
                self.finished.append(op)
                return "done"
            raise ConfigError(f"unknown toy operation {op!r}")

        return await answer(work, "toy", ConfigError)


def toy_service(bus: Bus, toy: Toy) -> MicroService:
    p = bus.subjects.prefix
    return MicroService(
        bus,
        name="relaybus-toy",
        description="a toy",
        queue="toy",
        endpoints=[
            Endpoint(name=op, subject=f"{p}.svc.toy.{op}", handler=toy.handle)
            for op in ("echo", "crash", "slow")
        ],
        unmatched=(f"{p}.svc.toy.*", toy.handle),
    )


async def test_replies_are_the_handler_s_bytes_and_errors_are_refusals(
    bus: Bus, plain: NATS
) -> None:
    p, toy = bus.subjects.prefix, Toy()
    async with toy_service(bus, toy):
        echoed = await plain.request(f"{p}.svc.toy.echo", b'{"a": [1, 2]}', timeout=5)
        assert echoed.data == b'{"ok":true,"body":{"a":[1,2]}}'
        assert not echoed.headers  # nothing added to what clients got before
        unknown = await plain.request(f"{p}.svc.toy.nope", b"{}", timeout=5)
        assert json.loads(unknown.data)["error"]["message"] == "unknown toy operation 'nope'"
        # a handler that raises is logged and not answered: the caller is not told "ok"
        with pytest.raises(nats.errors.TimeoutError):
            await plain.request(f"{p}.svc.toy.crash", b"{}", timeout=1)
        stats = json.loads((await plain.request("$SRV.STATS.relaybus-toy", b"", timeout=5)).data)
        counts = {e["name"]: (e["num_requests"], e["data"]) for e in stats["endpoints"]}
        assert counts["echo"] == (1, {"refusals": 0, "unanswered": 0})
        assert counts["crash"] == (1, {"refusals": 0, "unanswered": 1})
        info = json.loads((await plain.request("$SRV.INFO.relaybus-toy", b"", timeout=5)).data)
        assert info["metadata"] == {"prefix": p}
        assert [e["subject"] for e in info["endpoints"]] == [
            f"{p}.svc.toy.{op}" for op in ("echo", "crash", "slow")
        ]
    with pytest.raises(nats.errors.NoRespondersError):  # stopped: nothing listens any more
        await plain.request("$SRV.PING.relaybus-toy", b"", timeout=2)
    with pytest.raises(nats.errors.NoRespondersError):
        await plain.request(f"{p}.svc.toy.echo", b"{}", timeout=2)


async def test_stopping_answers_the_request_in_hand_first(bus: Bus, plain: NATS) -> None:
    p, toy = bus.subjects.prefix, Toy()
    service = toy_service(bus, toy)
    await service.__aenter__()
    # Given a request the handler is still working on
    pending = asyncio.ensure_future(plain.request(f"{p}.svc.toy.slow", b"{}", timeout=10))
    await asyncio.wait_for(toy.started.wait(), 10)
    # When the service stops, and the work finishes meanwhile
    stopping = asyncio.ensure_future(service.__aexit__(None, None, None))
    await asyncio.sleep(0.2)
    assert not stopping.done()
    toy.release.set()
    await asyncio.wait_for(stopping, 10)
    # Then that request got its reply
    assert (await pending).data == b'{"ok":true,"body":"done"}'
    assert toy.finished == ["slow"]
