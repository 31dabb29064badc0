"""`relaybus mcp serve --agent NAME|MODULE:CLASS ... [--http HOST:PORT | --stdio]`.

Over HTTP every request carries a user token (`Authorization: Bearer TOKEN`) that the identity
service checks. Over stdio the server acts for the user its launcher names (`--user`/`--token`
or RELAYBUS_USER/RELAYBUS_TOKEN): stdio trusts the local process that started it. With identity
off (a dev stack) calls act as `user:dev`, and HTTP serves only on loopback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relaybus.bus import Bus, ConfigError, RelayError, Settings
from relaybus.bus.runtime import EXIT_OK
from relaybus.services.identity.settings import IdentitySettings

from ..settings import CallerSettings

if TYPE_CHECKING:  # the MCP SDK loads only when `relaybus mcp serve` runs, not for every command
    from ..base import Agent
    from .access import Caller
    from .server import RelaybusTools

MCP_PATH = "/mcp"


def parse_http(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise RelayError(f"--http {value!r} is not HOST:PORT (e.g. 127.0.0.1:8765; port 0: any)")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve_http(
    settings: Settings, tools_of: Callable[[Bus], RelaybusTools], host: str, port: int
) -> int:
    import uvicorn

    from ..console.access import is_loopback
    from ..console.cli import _server, listen
    from ..console.middleware import LocalHostOnly
    from .access import DEV_USER, BearerAuth

    identity = IdentitySettings.of(settings).identity
    if not identity and not is_loopback(host):
        raise ConfigError(
            f"identity is off, so calls would act as user:{DEV_USER} without a token: serve on "
            "loopback (--http 127.0.0.1:PORT) or turn identity on (RELAYBUS_IDENTITY=1)"
        )
    sock = listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}{MCP_PATH}"
    with sock:
        async with Bus(settings, name="relaybus-mcp") as bus:
            tools = tools_of(bus)
            app = tools.server().streamable_http_app(streamable_http_path=MCP_PATH, host=host)
            guarded = BearerAuth(app, bus, identity=identity)
            config = uvicorn.Config(
                LocalHostOnly(guarded) if is_loopback(host) else guarded,
                log_config=None,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=1,
            )
            auth = (
                "bearer user token required" if identity else f"dev: calls act as user:{DEV_USER}"
            )
            print(f"relaybus mcp at {url} ({auth}); tools: {', '.join(tools.agents)}", flush=True)
            await _server(config).serve(sockets=[sock])
    return EXIT_OK


async def serve_stdio(
    settings: Settings, tools_of: Callable[[Bus], RelaybusTools], user: str, token: str | None
) -> int:
    from mcp.server.stdio import stdio_server

    identity = IdentitySettings.of(settings).identity
    async with Bus(settings, name="relaybus-mcp") as bus:
        caller = await local_caller(bus, identity, user, token)
        tools = tools_of(bus)
        tools.local = caller
        server = tools.server()
        print(f"relaybus mcp on stdio as {caller.sender}", file=sys.stderr, flush=True)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
    return EXIT_OK


async def local_caller(bus: Bus, identity: bool, user: str, token: str | None) -> Caller:
    """The stdio server's one caller, checked once at start."""
    from .access import DEV_USER, Caller, TokenGate, Unauthenticated, audit_refusal, claimed_user

    user = user.removeprefix("user:")
    if not identity:
        return Caller(user or DEV_USER)
    if not token:
        raise ConfigError(
            "identity is on: give the user's token (--token or RELAYBUS_TOKEN, from "
            "`relaybus identity user token USER`)"
        )
    try:
        caller = await TokenGate(bus).caller(token)
    except Unauthenticated as exc:
        await audit_refusal(bus, "mcp/stdio", claimed_user(token), str(exc))
        raise ConfigError(f"RELAYBUS_TOKEN (or --token): {exc}") from None
    if user and caller.user != user:
        refused = f"the token is user {caller.user!r}'s, not {user!r}'s (RELAYBUS_USER)"
        await audit_refusal(bus, "mcp/stdio", user, refused)
        raise ConfigError(refused)
    return caller


def mcp_serve(load: Callable[[str], type[Agent]]) -> Callable[[argparse.Namespace, Settings], Any]:
    async def run(args: argparse.Namespace, settings: Settings) -> int:
        from .exposed import exposed_agents
        from .server import RelaybusTools

        agents = exposed_agents(args.agent, args.description, load)
        if args.wait <= 0:
            raise RelayError("--wait must be a positive number of seconds")

        def tools_of(bus: Bus) -> RelaybusTools:
            return RelaybusTools(bus, agents, wait_s=args.wait)

        if args.stdio:
            launcher = CallerSettings.of(settings)
            user = args.user or launcher.user
            token = args.token or launcher.token or None
            return await serve_stdio(settings, tools_of, user, token)
        host, port = parse_http(args.http)
        return await serve_http(settings, tools_of, host, port)

    return run


def register(sub: Any, load: Callable[[str], type[Agent]]) -> None:
    mcp = sub.add_parser("mcp", help="Model Context Protocol").add_subparsers(
        dest="mcp_cmd", required=True
    )
    p = mcp.add_parser("serve", help="offer agents as MCP tools (streamable HTTP or stdio)")
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME|MODULE:CLASS",
        help="an agent to offer (repeat); MODULE:CLASS also offers its input schema and docstring",
    )
    p.add_argument(
        "--description", action="append", default=[], metavar="NAME=TEXT", help="a tool's text"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--http",
        default="127.0.0.1:8765",
        metavar="HOST:PORT",
        help="serve streamable HTTP at http://HOST:PORT/mcp (default 127.0.0.1:8765)",
    )
    where.add_argument("--stdio", action="store_true", help="serve one client on stdin/stdout")
    p.add_argument("--user", default=None, help="stdio: the user calls act for (RELAYBUS_USER)")
    p.add_argument(
        "--token",
        default=None,
        help="stdio: that user's token (prefer RELAYBUS_TOKEN: arguments show in `ps`)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="seconds a call waits for its run; after that it answers with the run id",
    )
    p.set_defaults(func=mcp_serve(load))
