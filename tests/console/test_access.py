"""The console over HTTP (httpx against the real `relaybus console` processes): who may see
what, clear errors, dead letters replayed, and the command's own input checks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from relaybus.agents.submit import run_store, wait_for_run
from relaybus.bus.feed import EventFeed
from relaybus.services.identity.client import read_audit

from ..conftest import ROOT, child_env
from .conftest import Stack

PLAN = {"items": ["acme", "globex"], "approval": True}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def eventually(
    probe: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 30.0
) -> Any:
    """Probe until it returns something truthy (bounded); the value it returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if value := await probe():
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def waiting_for_approval(stack: Stack, run_id: str) -> None:
    async with stack.bus() as bus:
        runs = await run_store(bus)

        async def probe() -> bool:
            record = await runs.get(run_id)
            return record is not None and record.pending_signals() == ["approval"]

        await eventually(probe, f"run {run_id} to wait for its approval")


async def test_off_loopback_every_api_call_needs_a_token_the_identity_service_accepts(
    stack: Stack,
) -> None:
    async with httpx.AsyncClient(base_url=stack.remote_url, timeout=10) as http:
        # Given the console bound to 0.0.0.0: the page loads (it shows the login form) ...
        page = await http.get("/")
        assert page.status_code == 200 and "relaybus console" in page.text
        # ... but no data without a token, nor with one the identity service refuses
        for path in ("/api/runs", "/api/approvals", "/api/costs", "/api/dlq", "/api/events"):
            refused = await http.get(path)
            assert refused.status_code == 401, path
            assert "sign in with a user token" in refused.json()["error"]
        forged = await http.get("/api/runs", headers=bearer("rb_alice_0000_forged"))
        assert forged.status_code == 401
        assert forged.json()["error"].startswith("the token was refused: user 'alice'")
        # a bearer token works, and so does the login cookie
        assert (await http.get("/api/me", headers=bearer(stack.tokens["alice"]))).json()[
            "user"
        ] == "alice"
        login = await http.post("/api/login", json={"token": stack.tokens["bob"]})
        assert login.status_code == 200 and login.json() == {"user": "bob"}
        assert "httponly" in login.headers["set-cookie"].lower()
        me = await http.get("/api/me")
        assert me.json() == {"user": "bob", "operator": False, "local": False}
        # a cross-site form post is refused before anything happens
        cross = await http.post("/api/logout", json={}, headers={"Origin": "http://evil.example"})
        assert cross.status_code == 400 and "evil.example" in cross.json()["error"]
    async with stack.bus() as bus:
        denied = await read_audit(bus, "alice", decision="deny")
    assert any(r.action == "user/authenticate" for r in denied)


async def test_a_user_sees_only_their_own_runs_costs_approvals_and_events(stack: Stack) -> None:
    # Given a waiting run of alice's and one of bob's
    mine = await stack.publish("alice", "c_plan", PLAN)
    theirs = await stack.publish("bob", "c_plan", PLAN)
    await waiting_for_approval(stack, mine)
    await waiting_for_approval(stack, theirs)
    alice = bearer(stack.tokens["alice"])
    async with httpx.AsyncClient(base_url=stack.remote_url, timeout=10, headers=alice) as http:
        runs = (await http.get("/api/runs")).json()
        assert mine in [r["run_id"] for r in runs]
        assert {r["submitted_by"] for r in runs} == {"user:alice"}
        # another tenant's run looks exactly like a run that does not exist
        hidden = await http.get(f"/api/runs/{theirs}")
        assert hidden.status_code == 404 and hidden.json() == {"error": f"no run {theirs}"}
        assert (await http.get(f"/api/runs/{mine}")).json()["run"]["submitted_by"] == "user:alice"
        approvals = (await http.get("/api/approvals")).json()
        assert {a["run_id"] for a in approvals} >= {mine}
        assert theirs not in {a["run_id"] for a in approvals}
        costs = (await http.get("/api/costs")).json()
        assert {line["user"] for line in costs["lines"]} == {"alice"}
        levels = {row["level"].split("@")[0] for row in costs["levels"]}
        assert "user:alice" in levels and f"run:{mine}" in levels
        assert not any(level.startswith(("user:bob", "agent:")) for level in levels)
        assert f"run:{theirs}" not in levels
        # approving bob's run is refused (and audited), and his run still waits
        grab = await http.post(f"/api/runs/{theirs}/signals/approval", json={"decision": "approve"})
        assert grab.status_code == 404
        seen = await _stream_run_ids(http, until=mine)
        assert mine in seen and theirs not in seen
    async with stack.bus() as bus:
        record = await (await run_store(bus)).get(theirs)
        assert record is not None and record.pending_signals() == ["approval"]
        denials = await read_audit(bus, "alice", run_id=theirs, decision="deny")
        assert [d.action for d in denials] == ["run/signal"]

    # The local operator sees both, and decides: bob's approved, alice's rejected
    async with httpx.AsyncClient(base_url=stack.local_url, timeout=10) as http:
        both = {r["run_id"] for r in (await http.get("/api/runs")).json()}
        assert {mine, theirs} <= both
        async with stack.bus() as bus, EventFeed(bus, theirs, replay=True) as feed:
            yes = await http.post(
                f"/api/runs/{theirs}/signals/approval", json={"decision": "approve"}
            )
            assert yes.status_code == 200 and yes.json()["delivered"] is True
            done = await wait_for_run(feed, theirs, 30)
        assert done.status == "completed" and done.result["published"].startswith("posted report")
        async with stack.bus() as bus, EventFeed(bus, mine, replay=True) as feed:
            no = await http.post(f"/api/runs/{mine}/signals/approval", json={"decision": "reject"})
            assert no.status_code == 200 and no.json()["approved"] is False
            done = await wait_for_run(feed, mine, 30)
        assert done.status == "completed" and done.result["published"] == "posted rejected"
        async with stack.bus() as bus:
            allowed = await read_audit(bus, "bob", run_id=theirs, decision="allow")
        assert any(r.action == "run/signal" and r.actor == "console:operator" for r in allowed)


async def _stream_run_ids(http: httpx.AsyncClient, until: str) -> set[str]:
    """Run ids on the live feed (backlog of the last minutes first) until `until`'s
    suspension shows up."""
    seen: set[str] = set()
    async with asyncio.timeout(20), http.stream("GET", "/api/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            seen.add(event["run_id"])
            if event["run_id"] == until and event["kind"] == "suspended":
                return seen
    return seen


async def test_bad_requests_get_clear_errors(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.local_url, timeout=10) as http:
        bad = await http.get("/api/runs/not%20a%20run")
        assert bad.status_code == 404 and bad.json() == {"error": "'not a run' is not a run id"}
        unknown = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"
        missing = await http.get(f"/api/runs/{unknown}")
        assert missing.status_code == 404 and missing.json() == {"error": f"no run {unknown}"}
        feed = await http.get("/api/events", params={"run": "no such run"})
        assert feed.status_code == 404 and "is not a run id" in feed.json()["error"]
        nowhere = await http.get("/api/nothing")
        assert nowhere.status_code == 404 and nowhere.json() == {"error": "nothing at /api/nothing"}
        vague = await http.post(f"/api/runs/{unknown}/signals/approval", json={"decision": "maybe"})
        assert vague.status_code == 400 and "approve" in vague.json()["error"]
        form = await http.post(
            f"/api/runs/{unknown}/signals/approval", data={"decision": "approve"}
        )
        assert form.status_code == 400 and "JSON" in form.json()["error"]
        # a run that waits for nothing: a conflict that says what it waits for
        run_id = await _finished_run(stack)
        late = await http.post(f"/api/runs/{run_id}/signals/approval", json={"decision": "approve"})
        assert late.status_code == 409
        assert "does not wait for signal 'approval'; it waits for nothing" in late.json()["error"]
        # on loopback, only loopback names are answered (no DNS rebinding onto the operator)
        rebound = await http.get("/api/runs", headers={"Host": "evil.example"})
        assert rebound.status_code == 421
        # a run id too long for a subject is refused, and the console's connection survives
        # it (such a key ended the connection for good: every later call answered 500)
        for huge in (await http.get(f"/api/reviews/{'x' * 4000}"),):
            assert huge.status_code in (400, 404), huge.text
        assert (await http.get("/api/runs")).status_code == 200
    async with httpx.AsyncClient(base_url=stack.remote_url, timeout=30) as http:
        # a body over 1 MB is refused before anything reads it, login included
        big = await http.post("/api/login", content=b"x" * 2_000_001)
        assert big.status_code == 413, big.text


async def _finished_run(stack: Stack) -> str:
    run_id = await stack.publish("alice", "c_plan", {"items": ["x"], "approval": False})
    async with stack.bus() as bus, EventFeed(bus, run_id, replay=True) as feed:
        done = await wait_for_run(feed, run_id, 30)
    assert done.status == "completed", done.error
    return run_id


async def test_a_dead_letter_is_listed_and_replayed_and_the_run_completes(
    stack: Stack, tmp_path: Path
) -> None:
    block = tmp_path / "upstream-down"
    block.write_text("down")
    run_id = await stack.publish("alice", "c_flaky", {"block": str(block)})
    async with stack.bus() as bus, EventFeed(bus, run_id, replay=True) as feed:
        failed = await wait_for_run(feed, run_id, 30)
    assert failed.status == "failed"
    alice = bearer(stack.tokens["alice"])
    async with httpx.AsyncClient(base_url=stack.remote_url, timeout=10, headers=alice) as http:
        letters = [d for d in (await http.get("/api/dlq")).json() if d["run_id"] == run_id]
        assert len(letters) == 1
        (letter,) = letters
        assert letter["agent"] == "c_flaky" and letter["attempts"] == 3
        assert "the upstream is down" in letter["reason"]
        bob = bearer(stack.tokens["bob"])
        stolen = await http.post(f"/api/dlq/{letter['id']}/replay", json={}, headers=bob)
        assert stolen.status_code == 404
        block.unlink()
        async with stack.bus() as bus, EventFeed(bus, run_id, kind="completed") as feed:
            replayed = await http.post(f"/api/dlq/{letter['id']}/replay", json={})
            assert replayed.status_code == 200 and replayed.json()["run_id"] == run_id
            done = await feed.next(30)
        assert done is not None and done.kind == "completed"
        assert run_id not in {d["run_id"] for d in (await http.get("/api/dlq")).json()}
        again = await http.post(f"/api/dlq/{letter['id']}/replay", json={})
        assert again.status_code == 404 and "no dead letter" in again.json()["error"]


def test_the_command_refuses_bad_input_with_one_line(stack: Stack) -> None:
    env = child_env(stack.settings)
    for args, message in (
        (["--port", "70000"], "error: --port 70000 is not a port"),
        (["--host", "203.0.113.9", "--port", "0"], "error: cannot listen on 203.0.113.9:0"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "relaybus.cli", "console", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), done.stderr
