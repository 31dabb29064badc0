"""`relaybus a2a serve` on a development stack: another vendor's a2a-sdk client sends messages
to relaybus agents, streams their state, answers a run waiting for input, reads and cancels."""

from __future__ import annotations

import subprocess
import sys

import httpx
from a2a.types import GetTaskRequest, SendMessageRequest, TaskState

from relaybus.agents.a2a.cli import serving
from relaybus.agents.a2a.extension import DELEGATION_URI
from relaybus.agents.submit import run_store
from relaybus.bus import Settings
from relaybus.testing import AgentEnvironment

from ..a2a_agents import Approver, Echo
from ..conftest import child_env
from .helpers import a2a_client, data_message, result_of, send


async def test_a_message_runs_the_agent_and_the_task_carries_its_result() -> None:
    async with (
        AgentEnvironment([Echo]) as env,
        serving(env.client.bus, ["echo"], "127.0.0.1", 0) as served,
    ):
        async with httpx.AsyncClient() as http:
            card = (await http.get(f"{served.url}/agents/echo/.well-known/agent-card.json")).json()
        assert card["name"] == "echo"
        assert card["capabilities"]["streaming"] is True
        assert card["capabilities"]["extensions"][0]["uri"] == DELEGATION_URI

        async with a2a_client(f"{served.url}/agents/echo") as client:
            task = await send(client, data_message({"text": "hi", "n": 3}))
        assert result_of(task) == {"echo": {"text": "hi", "n": 3}}
        record = await env.client.run(f"a2a-{task.id}").record()
        assert record.status == "completed" and record.submitted_by == "user:dev"


async def test_a_page_rebinding_its_name_to_loopback_runs_nothing() -> None:
    # a dev stack's A2A server acts as user:dev for anyone who reaches it: only loopback names
    async with (
        AgentEnvironment([Echo]) as env,
        serving(env.client.bus, ["echo"], "127.0.0.1", 0) as served,
    ):
        rebound = {"host": f"evil.test:{served.url.rsplit(':', 1)[1]}"}
        message = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {
                "message": {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]}
            },
        }
        async with httpx.AsyncClient() as http:
            card = await http.get(
                f"{served.url}/agents/echo/.well-known/agent-card.json", headers=rebound
            )
            sent = await http.post(f"{served.url}/agents/echo", json=message, headers=rebound)
        assert card.status_code == 421 and sent.status_code == 421
        assert "answers only on a loopback name" in sent.json()["error"]
        assert await (await run_store(env.client.bus)).recent(5) == []


async def test_a_task_outlives_the_server_that_took_it() -> None:
    """A2A tasks live in the stack (KV), not in one process: after `relaybus a2a serve` restarts
    (or on a second replica) the caller still reads its task and its result."""
    async with AgentEnvironment([Echo]) as env:
        async with serving(env.client.bus, ["echo"], "127.0.0.1", 0) as first:
            async with a2a_client(f"{first.url}/agents/echo") as client:
                task = await send(client, data_message({"text": "kept"}))
        assert result_of(task) == {"echo": {"text": "kept"}}
        async with serving(env.client.bus, ["echo"], "127.0.0.1", 0) as second:
            async with a2a_client(f"{second.url}/agents/echo") as client:
                again = await client.get_task(GetTaskRequest(id=task.id))
        assert again.id == task.id and result_of(again) == {"echo": {"text": "kept"}}


async def test_streaming_shows_the_states_and_input_required_resumes_on_a_follow_up() -> None:
    async with (
        AgentEnvironment([Approver]) as env,
        serving(env.client.bus, ["approver"], "127.0.0.1", 0) as served,
    ):
        async with a2a_client(f"{served.url}/agents/approver", streaming=True) as client:
            # Given a run that waits in ctx.wait_signal("approval")
            states = []
            task_id = context_id = ""
            stream = client.send_message(SendMessageRequest(message=data_message({"amount": 5})))
            async for response in stream:
                if response.HasField("task"):
                    task_id, context_id = response.task.id, response.task.context_id
                    states.append(response.task.status.state)
                elif response.HasField("status_update"):
                    states.append(response.status_update.status.state)
            # Then the stream ends with INPUT_REQUIRED
            assert states[-1] == TaskState.TASK_STATE_INPUT_REQUIRED, states
            assert TaskState.TASK_STATE_SUBMITTED in states
            got = await client.get_task(GetTaskRequest(id=task_id))
            assert got.status.state == TaskState.TASK_STATE_INPUT_REQUIRED

            # When the caller answers on the same task, the signal resumes the run
            answer = data_message({"by": "ops"}, task_id=task_id, context_id=context_id)
            final = []
            async for response in client.send_message(SendMessageRequest(message=answer)):
                final.append(response)
            got = await client.get_task(GetTaskRequest(id=task_id))
        assert result_of(got) == {"approved": {"by": "ops"}, "task": {"amount": 5}}


def test_the_cli_refuses_to_serve_a_stack_without_identity_beyond_loopback(
    settings: Settings,
) -> None:
    for http, problem in (
        ("0.0.0.0:0", "listen on loopback (127.0.0.1) or turn identity on"),
        ("localhost", "use HOST:PORT"),
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "relaybus.cli",
                "a2a",
                "serve",
                "--agent",
                "echo",
                "--http",
                http,
            ],
            env=child_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1 and problem in done.stderr, done.stderr
