"""`relaybus a2a serve --agent NAME [--agent NAME …] [--http HOST:PORT]`: serve relaybus agents
to other vendors' agents over A2A (uvicorn), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from relaybus.bus import Bus, ConfigError, Settings
from relaybus.bus.runtime import EXIT_OK
from relaybus.services.identity.settings import IdentitySettings

from ..console.access import is_loopback
from ..console.cli import _server, listen

A2A_TIMEOUT_S = 5.0  # a service that does not answer fails the request, not hangs it


def parse_http(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--http {text!r}: use HOST:PORT, e.g. 127.0.0.1:8090 (port 0: any free)")
    return host.strip("[]"), int(port)


def check_listen(settings: Settings, host: str) -> bool:
    """Whether identity is on; ConfigError for a non-loopback address on a stack without it."""
    identity_on = IdentitySettings.of(settings).identity
    if not identity_on and not is_loopback(host):
        raise ConfigError(
            f"--http {host}: this stack runs without identity, so A2A callers cannot be told "
            "apart; listen on loopback (127.0.0.1) or turn identity on (RELAYBUS_IDENTITY=1)"
        )
    return identity_on


@dataclass(frozen=True)
class Served:
    url: str
    stopped: asyncio.Task[None]  # ends once the server stopped (SIGTERM/SIGINT with `signals`)


def _quiet_server(config: Any) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn leaving the process's signal handlers alone (the embedding program's)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


@contextlib.asynccontextmanager
async def serving(
    bus: Bus, agents: list[str], host: str, port: int, *, signals: bool = False
) -> AsyncIterator[Served]:
    """Serve `agents` on `host:port` while the block runs; with `signals`, SIGTERM and SIGINT
    stop the server (`served.stopped` ends)."""
    import uvicorn

    from relaybus.bus.httpserve import BodyLimit

    from ..console.middleware import LocalHostOnly
    from .server import create_app
    from .store import KvTaskStore

    identity_on = check_listen(bus.settings, host)
    stores = {agent: await KvTaskStore.open(bus, agent) for agent in dict.fromkeys(agents)}
    sock = listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"
    app = create_app(bus, agents, url, identity_on, stores)
    limited = BodyLimit(app)  # 413 above 1 MB, before the gateway reads a byte of it
    config = uvicorn.Config(
        LocalHostOnly(limited) if is_loopback(host) else limited,
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = _server(config) if signals else _quiet_server(config)
    with sock:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            for _ in range(200):  # bounded: uvicorn starts within a second or it failed
                if server.started or task.done():
                    break
                await asyncio.sleep(0.05)
            if task.done():
                task.result()
                raise ConfigError(f"the A2A server on {url} stopped as it started")
            yield Served(url=url, stopped=task)
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)


async def serve(args: argparse.Namespace, settings: Settings) -> int:
    host, port = parse_http(args.http)
    check_listen(settings, host)
    quick = settings.model_copy(
        update={"request_timeout_s": min(settings.request_timeout_s, A2A_TIMEOUT_S)}
    )

    async with Bus(quick, name="relaybus-a2a") as bus:
        lost = asyncio.Event()
        bus.stop_when_lost(lost)  # a gateway on a dead connection would answer only errors
        async with serving(bus, args.agent, host, port, signals=True) as served:
            for agent in dict.fromkeys(args.agent):
                card = f"{served.url}/agents/{agent}/.well-known/agent-card.json"
                print(
                    f"A2A agent {agent} at {served.url}/agents/{agent} (card: {card})", flush=True
                )
            gone = asyncio.ensure_future(lost.wait())
            await asyncio.wait({served.stopped, gone}, return_when=asyncio.FIRST_COMPLETED)
            gone.cancel()
    return 1 if bus.lost else EXIT_OK


def register(sub: Any) -> None:
    a2a = sub.add_parser("a2a", help="Agent2Agent: serve relaybus agents to other agents")
    a2a_sub = a2a.add_subparsers(dest="a2a_command", required=True)
    p = a2a_sub.add_parser("serve", help="publish an Agent Card per agent and accept A2A tasks")
    p.add_argument("--agent", action="append", required=True, help="an agent to expose (repeat)")
    p.add_argument(
        "--http",
        default="127.0.0.1:8090",
        help="HOST:PORT to listen on (default 127.0.0.1:8090; port 0: any free port)",
    )
    p.set_defaults(func=serve)
