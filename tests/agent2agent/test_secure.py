"""`relaybus a2a serve` on a secured stack: a bearer token names the user a run acts for; no
token, a bad token or another user's task is refused, and every refusal is audited."""

from __future__ import annotations

import httpx
import pytest
from a2a.types import CancelTaskRequest, GetTaskRequest, TaskState
from a2a.utils.errors import TaskNotFoundError

from relaybus.services.identity.client import read_audit
from relaybus.services.runs.state import RunRecord

from .conftest import A2aStack
from .helpers import a2a_client, data_message, result_of, send

SEND = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "SendMessage",
    "params": {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}},
}


async def _record(stack: A2aStack, task_id: str) -> RunRecord:
    async with stack.client("alice") as client:
        return await client.run(f"a2a-{task_id}").record()


async def test_a_caller_without_a_valid_token_is_refused_and_audited(
    a2a_stack: A2aStack,
) -> None:
    a2a_stack.start_agent("a2a_agents:Echo")
    url = a2a_stack.agent_url("echo")
    async with httpx.AsyncClient(headers={"A2A-Version": "1.0"}) as http:
        card = await http.get(f"{url}/.well-known/agent-card.json")  # cards are public
        assert card.status_code == 200 and "relaybus-token" in card.json()["securitySchemes"]
        bare = await http.post(url, json=SEND)
        forged = await http.post(url, json=SEND, headers={"Authorization": "Bearer rb_x_y_z"})
        in_url = await http.post(f"{url}?token={a2a_stack.tokens['alice']}", json=SEND)
    assert in_url.status_code == 400 and "tokens never travel in URLs" in in_url.json()["error"]
    assert bare.status_code == 401 and "Bearer" in bare.headers["www-authenticate"]
    assert "send `Authorization: Bearer TOKEN`" in bare.json()["error"]
    assert forged.status_code == 401 and "the token was refused" in forged.json()["error"]
    denied = await read_audit(a2a_stack.bus, "a2a:anonymous", decision="deny")
    assert [r.reason for r in denied][:1] == ["no bearer token"]
    assert any("the token was refused" in r.reason for r in denied)

    # with alice's token the run is alice's: her identity is the run's root link
    async with a2a_client(url, a2a_stack.tokens["alice"]) as client:
        task = await send(client, data_message({"n": 1}))
    assert result_of(task) == {"echo": {"n": 1}}
    assert (await _record(a2a_stack, task.id)).submitted_by == "user:alice"


async def test_a_user_sees_and_cancels_only_their_own_tasks(a2a_stack: A2aStack) -> None:
    a2a_stack.start_agent("a2a_agents:Approver")
    url = a2a_stack.agent_url("approver")
    async with a2a_client(url, a2a_stack.tokens["alice"]) as alice:
        waiting = await send(alice, data_message({"amount": 7}))
        assert waiting.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        async with a2a_client(url, a2a_stack.tokens["bob"]) as bob:
            with pytest.raises(TaskNotFoundError):
                await bob.get_task(GetTaskRequest(id=waiting.id))
            with pytest.raises(TaskNotFoundError):
                await bob.cancel_task(CancelTaskRequest(id=waiting.id))
            with pytest.raises(TaskNotFoundError):
                await send(bob, data_message(True, task_id=waiting.id))
        assert (await _record(a2a_stack, waiting.id)).status == "running"
        denied = await read_audit(a2a_stack.bus, "bob", decision="deny")
        assert {r.action for r in denied} >= {"a2a/get", "a2a/cancel", "a2a/follow-up"}

        cancelled = await alice.cancel_task(CancelTaskRequest(id=waiting.id))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    record = await _record(a2a_stack, waiting.id)
    assert record.status == "cancelled" and record.submitted_by == "user:alice"


async def test_a_huge_task_id_or_body_is_refused_and_the_gateway_keeps_serving(
    a2a_stack: A2aStack,
) -> None:
    """A task id too long for a NATS subject used to end the gateway's connection for good
    (every later request failed, for every user); a body of hundreds of MB was read whole."""
    a2a_stack.start_agent("a2a_agents:Echo")
    url = a2a_stack.agent_url("echo")
    bob = {"A2A-Version": "1.0", "Authorization": f"Bearer {a2a_stack.tokens['bob']}"}
    async with httpx.AsyncClient(headers=bob, timeout=30) as http:
        for method in ("GetTask", "CancelTask"):
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"id": "x" * 3200}}
            answer = await http.post(url, json=body)
            assert answer.status_code == 200 and "error" in answer.json(), answer.text
            assert "connection closed" not in answer.text
        big = await http.post(url, content=b"x" * 2_000_001)
        assert big.status_code == 413, big.text
    # and alice is served as ever
    async with a2a_client(url, a2a_stack.tokens["alice"]) as client:
        task = await send(client, data_message({"n": 2}))
    assert result_of(task) == {"echo": {"n": 2}}
