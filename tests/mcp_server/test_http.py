"""`relaybus mcp serve --http`: an MCP client (the `mcp` SDK) calls relaybus agents as tools,
as the user whose token it sends."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from relaybus.agents.submit import run_store
from relaybus.bus.streams import read_matching
from relaybus.services.identity.client import read_audit
from relaybus.services.runs.shown import shown_one

from .conftest import Stack

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"},
    },
}


@contextlib.asynccontextmanager
async def connect(url: str, token: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"}
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


def text_of(result: Any) -> str:
    return " ".join(block.text for block in result.content)


async def test_a_user_calls_an_agent_as_a_tool_and_gets_its_result(
    stack: Stack, mcp_url: str
) -> None:
    async with connect(mcp_url, stack.tokens["alice"]) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == {"mcp_greet", "mcp_slow", "relaybus.run", "relaybus.cancel"}
        greet = tools["mcp_greet"]
        assert greet.description == "Greets someone by name, as often as asked."
        assert greet.input_schema["required"] == ["name"]
        assert greet.input_schema["properties"]["times"]["type"] == "integer"
        assert tools["mcp_slow"].input_schema == {"type": "object"}  # offered by name only

        done = await client.call_tool("mcp_greet", {"name": "Ada", "times": 2})
        assert not done.is_error, text_of(done)
        assert done.structured_content["result"] == {"greeting": "hello Ada hello Ada"}
        run_id = done.structured_content["run_id"]

        # arguments that do not follow the agent's input are refused before any run starts
        wrong_type = await client.call_tool("mcp_greet", {"name": 7})
        unknown_field = await client.call_tool("mcp_greet", {"name": "Ada", "admin": True})
        for refused in (wrong_type, unknown_field):
            assert refused.is_error
            assert "arguments for 'mcp_greet' do not match its input" in text_of(refused)
        assert "name" in text_of(wrong_type) and "admin" in text_of(unknown_field)

        read = await client.call_tool("relaybus.run", {"run_id": run_id})
        assert read.structured_content["status"] == "completed"

    runs = await (await run_store(stack.bus)).recent(20)
    assert [(r.run_id, r.agent, r.status, r.submitted_by) for r in runs] == [
        (run_id, "mcp_greet", "completed", "user:alice")
    ]
    denied = await read_audit(stack.bus, "alice", decision="deny")
    assert [r.action for r in denied] == ["mcp/call", "mcp/call"]
    assert all(r.actor == "mcp:server" for r in denied)
    # no token passthrough: nothing the run left on the bus carries the caller's token
    subjects = stack.bus.subjects
    stored = [
        *await read_matching(stack.bus, subjects.stream("EVENTS"), f"{subjects.prefix}.event.>"),
        *await read_matching(stack.bus, subjects.stream("AUDIT"), f"{subjects.prefix}.audit.>"),
    ]
    assert stored and not [s for s in stored if stack.tokens["alice"].encode() in s[2]]


async def test_a_request_without_a_token_or_with_a_wrong_one_gets_401_and_is_audited(
    stack: Stack, mcp_url: str
) -> None:
    alice = stack.tokens["alice"]
    forged = alice[:-6] + ("A" * 6 if not alice.endswith("A" * 6) else "B" * 6)
    accept = {"accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=30) as http:
        anonymous = await http.post(mcp_url, json=INITIALIZE, headers=accept)
        wrong = await http.post(
            mcp_url, json=INITIALIZE, headers={**accept, "authorization": f"Bearer {forged}"}
        )
    assert anonymous.status_code == 401
    assert "needs a relaybus user token" in anonymous.json()["error_description"]
    assert anonymous.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert wrong.status_code == 401
    assert "the token was refused by the identity service" in wrong.json()["error_description"]
    assert forged not in wrong.text

    unknown = await read_audit(stack.bus, "unknown", decision="deny")
    assert [r.action for r in unknown] == ["mcp/request"]
    refused = {r.action for r in await read_audit(stack.bus, "alice", decision="deny")}
    assert {"mcp/request", "user/authenticate"} <= refused  # ours, and the identity service's
    assert await (await run_store(stack.bus)).recent(5) == []


async def test_a_page_rebinding_its_name_to_loopback_gets_nothing(
    stack: Stack, mcp_url: str
) -> None:
    accept = {"accept": "application/json, text/event-stream"}
    bearer = {**accept, "authorization": f"Bearer {stack.tokens['alice']}"}
    async with httpx.AsyncClient(timeout=30) as http:
        rebound = await http.post(mcp_url, json=INITIALIZE, headers={**bearer, "host": "evil.test"})
        local = await http.post(mcp_url, json=INITIALIZE, headers=bearer)
    assert rebound.status_code == 421
    assert "answers only on a loopback name" in rebound.json()["error"]
    assert local.status_code == 200


async def test_a_long_run_reports_progress_and_cancelling_the_call_cancels_the_run(
    stack: Stack, mcp_url: str
) -> None:
    progress: list[str] = []
    three_steps = asyncio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")
        if sum(" step " in m for m in progress) >= 3:
            three_steps.set()

    async with connect(mcp_url, stack.tokens["alice"]) as alice:
        call = asyncio.create_task(
            alice.call_tool("mcp_slow", {"steps": 3}, progress_callback=on_progress)
        )
        await asyncio.wait_for(three_steps.wait(), 60)
        found = re.match(r"run (\S+): ", progress[0])
        assert found, progress
        run_id = found.group(1)
        runs = await run_store(stack.bus)

        async def status() -> str:
            record = await runs.get(run_id)
            assert record is not None
            return (await shown_one(stack.bus, record)).status

        assert await status() == "running"

        # Given alice's run, when bob reads or cancels it, then he is refused as if it did not exist
        async with connect(mcp_url, stack.tokens["bob"]) as bob:
            for tool in ("relaybus.run", "relaybus.cancel"):
                refused = await bob.call_tool(tool, {"run_id": run_id})
                assert refused.is_error
                assert f"no run {run_id!r} of yours" in text_of(refused)
        assert await status() == "running"
        bob_denied = await read_audit(stack.bus, "bob", decision="deny")
        assert [(r.action, r.run_id) for r in bob_denied] == [
            ("mcp/run/read", run_id),
            ("mcp/run/cancel", run_id),
        ]

        # When alice cancels her call, then the run is cancelled
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        for _ in range(200):  # bounded: the server cancels the run within a few seconds
            record = await runs.get(run_id)
            if record is not None and record.status == "cancelled":
                break
            await asyncio.sleep(0.1)
        assert record is not None and record.status == "cancelled", record
        assert "the MCP call of user:alice was cancelled" in (
            record.error.message if record.error else ""
        )
