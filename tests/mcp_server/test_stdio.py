"""`relaybus mcp serve --stdio`, launched by an MCP client (the `mcp` SDK) the way a desktop
client does: it acts for the user its launcher names in RELAYBUS_USER / RELAYBUS_TOKEN."""

from __future__ import annotations

import subprocess
import sys

from mcp import Client, StdioServerParameters

from relaybus.agents.submit import run_store
from relaybus.bus.runtime import EXIT_ERROR
from relaybus.services.identity.client import read_audit

from ..conftest import ROOT, child_env
from .conftest import OFFERED, Stack


def stdio_server(stack: Stack, **env: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "relaybus.cli", "mcp", "serve", "--stdio", *OFFERED],
        env=child_env(stack.settings, **env),
        cwd=ROOT,
    )


async def test_a_client_launches_the_server_on_stdio_and_calls_an_agent(stack: Stack) -> None:
    server = stdio_server(stack, RELAYBUS_USER="alice", RELAYBUS_TOKEN=stack.tokens["alice"])
    async with Client(server) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"mcp_greet", "mcp_slow"} <= names
        done = await client.call_tool("mcp_greet", {"name": "Grace"})
    assert not done.is_error, done.content
    assert done.structured_content["result"] == {"greeting": "hello Grace"}
    record = await (await run_store(stack.bus)).get(done.structured_content["run_id"])
    assert record is not None and record.submitted_by == "user:alice"


async def test_a_stdio_server_with_a_wrong_token_does_not_start_and_says_why(stack: Stack) -> None:
    forged = stack.tokens["alice"][:-6] + "zzzzzz"
    for env, why in (
        ({"RELAYBUS_USER": "alice", "RELAYBUS_TOKEN": forged}, "token was refused"),
        ({"RELAYBUS_USER": "alice", "RELAYBUS_TOKEN": stack.tokens["bob"]}, "is user 'bob'"),
        ({"RELAYBUS_USER": "alice"}, "identity is on: give the user's token"),
    ):
        server = stdio_server(stack, **env)
        out = subprocess.run(
            [server.command, *server.args],
            env=server.env,
            cwd=server.cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == EXIT_ERROR, out.stderr
        assert why in out.stderr
        assert forged not in out.stderr and stack.tokens["bob"] not in out.stderr
    denied = await read_audit(stack.bus, "alice", decision="deny")
    assert [r.action for r in denied if r.action.startswith("mcp/")] == ["mcp/stdio", "mcp/stdio"]
