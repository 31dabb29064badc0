"""A connect the Bus gives up on (a server that never answers, credentials refused) leaves no
socket open behind it: nats-py, cancelled between opening a socket and closing it itself,
left it to garbage collection, one per abandoned connect (a ResourceWarning in tests, and an
open file descriptor per retry in a process that keeps retrying)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relaybus.bus import Bus, ConnectionFailed, Settings

INFO = {
    "server_id": "fake",
    "version": "2.10.0",
    "proto": 1,
    "headers": True,
    "max_payload": 1 << 20,
}


class FakeServer:
    """A loopback TCP server that says INFO, then never answers (`refuse`: answers the client's
    CONNECT with an authorization error, and keeps its side open). Counts the connections
    the client has not closed."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.accepted = 0
        self.open = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            writer.write(b"INFO " + json.dumps(INFO).encode() + b"\r\n")
            await writer.drain()
            if self.refuse:
                await reader.readline()  # CONNECT
                writer.write(b"-ERR 'Authorization Violation'\r\n")
                await writer.drain()
            while await reader.read(4096):  # until the client closes its side
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def fake_server(*, refuse: bool = False) -> AsyncIterator[FakeServer]:
    fake = FakeServer(refuse=refuse)
    fake.server = await asyncio.start_server(fake._serve, "127.0.0.1", 0)
    try:
        yield fake
    finally:
        fake.server.close()


async def _all_closed(*servers: FakeServer, within_s: float = 2.0) -> bool:
    for _ in range(int(within_s / 0.05)):  # bounded
        if not any(s.open for s in servers):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_connect_given_up_on_closes_the_socket_it_opened(tmp_path: Path) -> None:
    # Given a server that accepts and never answers, and a client whose own deadline comes
    # while nats-py still waits on that socket (its connect timeout is a minute)
    async with fake_server() as mute:
        settings = Settings.from_env(
            {}, nats_url=mute.url, home=tmp_path, connect_timeout_s=0.25, nats_auth=False
        )
        # When the Bus gives up
        with pytest.raises(ConnectionFailed, match="cannot connect to NATS"):
            async with Bus(settings, name="gives-up", connect_options={"connect_timeout": 60}):
                pass
        # Then the socket it opened is closed now, not when it is collected
        assert mute.accepted >= 1
        assert await _all_closed(mute), f"{mute.open} connection(s) left open"


async def test_refused_credentials_leave_no_socket_open_on_any_server(tmp_path: Path) -> None:
    # Given two servers: the first refuses the credentials, the second never answers (nats-py
    # goes on to it at once, as it does to the next node of a cluster)
    async with fake_server(refuse=True) as refusing, fake_server() as mute:
        settings = Settings.from_env(
            {},
            nats_url=f"{refusing.url},{mute.url}",
            home=tmp_path,
            connect_timeout_s=2,
            nats_auth=False,
        )
        # When the Bus connects and is refused
        with pytest.raises(ConnectionFailed, match="refused this connection's credentials"):
            async with Bus(
                settings,
                name="refused",
                connect_options={"dont_randomize": True, "connect_timeout": 60},
            ):
                pass
        # Then it says so, and leaves no socket open on either server
        assert refusing.accepted == 1
        assert await _all_closed(refusing, mute), (refusing.open, mute.open)


async def test_a_connect_cancelled_by_its_caller_stops_and_closes_its_socket(
    tmp_path: Path,
) -> None:
    # Given a Bus connecting to a server that never answers
    async with fake_server() as mute:
        settings = Settings.from_env(
            {}, nats_url=mute.url, home=tmp_path, connect_timeout_s=30, nats_auth=False
        )
        bus = Bus(settings, name="cancelled", connect_options={"connect_timeout": 60})
        entering = asyncio.ensure_future(bus.__aenter__())
        for _ in range(250):  # bounded: 5 s
            if mute.accepted:
                break
            await asyncio.sleep(0.02)
        assert mute.accepted == 1
        # When its caller is cancelled (a shutdown, a timeout around it)
        entering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await entering
        # Then nats-py stops trying and the socket it opened is closed
        assert await _all_closed(mute), f"{mute.open} connection(s) left open"
        await asyncio.sleep(0.6)  # past nats-py's wait before it would try again
        assert mute.accepted == 1
