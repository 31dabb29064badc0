"""`relaybus console [--host 127.0.0.1] [--port 8080]`: serve the web console with uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import Any

from relaybus.bus import Bus, Settings
from relaybus.bus.runtime import EXIT_OK

from .access import is_loopback

CONSOLE_TIMEOUT_S = 2.0  # a service that does not answer makes a page say so, not hang


def _server(config: Any) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, except that SIGTERM/SIGINT only stop it: uvicorn would raise the signal
        again after shutting down, killing the process before the bus connection drains."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def stop(signum: int, frame: Any) -> None:
                self.should_exit = True

            previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (bound before uvicorn starts, so the printed port is the real one)."""
    from relaybus.bus.httpserve import listen_socket

    return listen_socket(host, port)


async def console(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from relaybus.bus.httpserve import BodyLimit

    from .app import create_app

    sock = listen(args.host, args.port)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{port}"

    def ready() -> None:
        access = (
            "local operator, no token needed"
            if is_loopback(args.host)
            else "sign in with a user token"
        )
        print(f"relaybus console at {url} ({access}) — console_url={url}", flush=True)

    quick = settings.model_copy(
        update={"request_timeout_s": min(settings.request_timeout_s, CONSOLE_TIMEOUT_S)}
    )
    with sock:
        async with Bus(quick, name="relaybus-console") as bus:
            config = uvicorn.Config(
                BodyLimit(create_app(bus, args.host, ready)),  # 413 above 1 MB, before any read
                log_config=None,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=1,
            )
            server = _server(config)
            lost = asyncio.Event()
            bus.stop_when_lost(lost)  # a console on a dead connection would answer only 500s

            async def stop_when_lost() -> None:
                await lost.wait()
                server.should_exit = True

            watch = asyncio.create_task(stop_when_lost())
            try:
                await server.serve(sockets=[sock])
            finally:
                watch.cancel()
    return 1 if bus.lost else EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser(
        "console", help="a web console: live handoffs, run graphs, costs, dead letters, approvals"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="where to listen (default 127.0.0.1; anywhere else needs user tokens)",
    )
    p.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    p.set_defaults(func=console)
