"""docs/wire.md, followed by a client with no relaybus library: plain nats-py publishes a task
to `relay.task.<agent>` and watches the run's handoffs and its end on `relay.event.<run>.>`.
The ingress admits it only with the user's token, and the agents never see that token."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relaybus.agents.submit import run_store
from relaybus.bus import Bus, PermissionViolation, new_id
from relaybus.bus.stack import read_stack
from relaybus.services.identity.client import read_audit

from .conftest import USER, SecureStack

CLIENT = Path(__file__).with_name("plain_client.py")


def client_url(secure: SecureStack) -> str:
    """The plain clients' NATS user from the stack record (not the operator's)."""
    record = read_stack(secure.settings)
    assert record is not None and record.client_url.startswith("nats://client:")
    return record.client_url


def plain(
    secure: SecureStack, agent: str, run_id: str, token: str, payload: str, wait_s: float = 60
) -> Any:
    """Run the plain client as its own process; what it printed."""
    done = subprocess.run(
        [
            sys.executable,
            str(CLIENT),
            client_url(secure),
            agent,
            run_id,
            USER,
            token,
            payload,
            str(wait_s),
        ],
        capture_output=True,
        timeout=90,
        check=True,
    )
    return json.loads(done.stdout)


async def test_a_plain_nats_client_starts_a_run_and_follows_every_handoff(
    secure: SecureStack,
) -> None:
    secure.start_agent("runtime_agents:FanOut")
    secure.start_agent("runtime_agents:Child")
    run_id = f"plain-{new_id()}"
    # When a plain nats-py client publishes JSON with the user's token and follows the events
    seen = plain(secure, "fanout", run_id, secure.token, '{"items": [{"x": 1}, {"x": 2}]}')
    # Then it imported nothing of relaybus, and the run ended with the result, readable JSON
    assert seen["relaybus_modules"] == []
    kinds = [e["kind"] for e in seen["events"]]
    assert kinds[-1] == "completed", kinds
    assert seen["events"][-1]["result"] == {"results": [2, 4]}
    # And it watched each handoff: submitted to fanout, fanout's calls to both children
    assert kinds[0] == "submitted"
    calls = [e for e in seen["events"] if e["kind"] in ("call", "handoff")]
    assert sorted((e["from"], e["to"]) for e in calls) == [("fanout", "child")] * 2
    async with Bus(secure.settings, name="check") as bus:
        record = await (await run_store(bus)).get(run_id)
    assert record is not None and record.submitted_by == f"user:{USER}"
    assert record.status == "completed"


async def test_a_plain_task_without_the_users_token_starts_nothing_and_is_audited(
    secure: SecureStack,
) -> None:
    secure.start_agent("runtime_agents:Child")
    run_id = f"forged-{new_id()}"
    # When a local process with NATS credentials claims to be alice with a wrong token
    seen = plain(secure, "child", run_id, "rb_not-alices-token", '{"x": 3}', wait_s=10)
    # Then no run exists and nothing about the run id is published to the caller
    assert seen["events"] == []
    async with Bus(secure.settings, name="check") as bus:
        assert await (await run_store(bus)).get(run_id) is None
        denials = [r for r in await read_audit(bus, f"user:{USER}") if r.decision == "deny"]
    assert any(r.action == "ingress/child" and "PermissionDenied" in r.reason for r in denials)


async def test_an_agent_cannot_publish_where_plain_tasks_or_admitted_tasks_go(
    secure: SecureStack,
) -> None:
    """The token travels only to the ingress: no agent reads `task.<agent>`, and no agent can
    publish an admitted task (`task.<agent>.$in`) that would skip the ingress's checks."""
    async with secure.hostile("mallory") as mallory:
        for subject in ("relay.task.child", "relay.task.child.$in"):
            with pytest.raises(PermissionViolation):
                await mallory.publish_core(subject, b"{}", confirm_s=2.0)


async def test_the_plain_client_user_can_submit_and_watch_and_nothing_more(
    secure: SecureStack,
) -> None:
    import nats
    from nats.errors import Error as NatsError

    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    nc = await nats.connect(client_url(secure), error_cb=on_error, inbox_prefix="_INBOX_client")
    try:
        js = nc.jetstream()
        # what it may not do: skip the ingress, send as an agent, read run records or
        # tokens in flight, ask the services, administer streams
        for subject in (
            "relay.task.child.$in",
            "relay.task.child.fanout",
            "$KV.relay_runs.x",
            "relay.svc.identity.token",
            "$JS.API.STREAM.PURGE.RELAY_EVENTS",
            "$JS.API.STREAM.MSG.GET.RELAY_TASKS",
        ):
            await nc.publish(subject, b"{}")
        await nc.subscribe("relay.task.>")
        await nc.subscribe("$KV.relay_runs.>")
        await nc.subscribe("_INBOX.>")  # other connections' replies: issued tokens, pulled tasks
        await nc.flush()
        for _ in range(50):  # bounded: the server reports each violation asynchronously
            if len(violations) >= 9:
                break
            await asyncio.sleep(0.1)
        with pytest.raises(NatsError):
            await js.stream_info("RELAY_TASKS")
    finally:
        await nc.close()
    assert len(violations) >= 9, violations
    assert any('"_inbox.>"' in v.lower() for v in violations), violations
    assert all("permissions violation" in v.lower() for v in violations), violations
