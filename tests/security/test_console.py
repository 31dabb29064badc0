"""The console's approvals and sign-in, against the real `relaybus console` processes of the
console test stack: Reject never approves, whatever data comes with it (the verdict is set by
the server from the button), and API tokens never travel in URLs."""

from __future__ import annotations

import httpx
import msgspec

from relaybus.agents.submit import run_store, wait_for_run
from relaybus.bus.feed import EventFeed
from relaybus.services.identity.client import read_audit

from ..console.conftest import Stack, stack  # noqa: F401  (the package's stack fixture)
from ..console.test_access import bearer, eventually, waiting_for_approval

PLAN = {"items": ["acme"], "approval": True}


async def _stored_signals(on: Stack, run_id: str) -> dict[str, object]:
    async with on.bus() as bus:
        record = await (await run_store(bus)).get(run_id)
    assert record is not None
    return {name: msgspec.json.decode(raw) for name, raw in record.signals.items()}


async def _still_waits(on: Stack, run_id: str) -> None:
    async with on.bus() as bus:
        record = await (await run_store(bus)).get(run_id)
    assert record is not None and record.pending_signals() == ["approval"], record
    assert record.signals == {}


async def test_reject_never_approves_whatever_data_is_sent(stack: Stack) -> None:  # noqa: F811
    run_id = await stack.publish("alice", "c_plan", PLAN)
    await waiting_for_approval(stack, run_id)
    path = f"/api/runs/{run_id}/signals/approval"
    smuggled = [
        {"decision": "reject", "data": "approve"},
        {"decision": "reject", "data": True},
        {"decision": "reject", "data": {"approve": True}},
        {"decision": "reject", "approved": True},
        {"decision": "reject", "verdict": "approve"},
        {"decision": "approve", "data": False},
        {"decision": "Approve"},
        {"decision": ["approve"]},
        {"decision": True},
        {"data": "approve"},
    ]
    alice = bearer(stack.tokens["alice"])
    for base, headers in ((stack.local_url, {}), (stack.remote_url, alice)):
        async with httpx.AsyncClient(base_url=base, timeout=10, headers=headers) as http:
            for body in smuggled:
                refused = await http.post(path, json=body)
                assert refused.status_code == 400, (body, refused.text)
                error = refused.json()["error"]
                assert "approve" in error and "reject" in error, error
                await _still_waits(stack, run_id)
    # the plain Reject button: the run receives `false` and takes its rejected path
    async with httpx.AsyncClient(base_url=stack.remote_url, timeout=10, headers=alice) as http:
        async with stack.bus() as bus, EventFeed(bus, run_id, replay=True) as feed:
            no = await http.post(path, json={"decision": "reject"})
            assert no.status_code == 200, no.text
            assert no.json() == {
                "run_id": run_id,
                "signal": "approval",
                "approved": False,
                "delivered": True,
                "cancelled": False,
            }
            done = await wait_for_run(feed, run_id, 30)
    assert done.status == "completed" and done.result["published"] == "posted rejected"
    assert await _stored_signals(stack, run_id) == {"approval": False}
    async with stack.bus() as bus:
        allowed = await read_audit(bus, "alice", run_id=run_id, decision="allow")
    decisions = [r.detail for r in allowed if r.action == "run/signal"]
    assert decisions == [
        {
            "signal": "approval",
            "approved": False,
            "verdict": "reject",
            "cancelled": False,
            "via": "console",
        }
    ]


async def test_approve_sends_exactly_true(stack: Stack) -> None:  # noqa: F811
    run_id = await stack.publish("bob", "c_plan", PLAN)
    await waiting_for_approval(stack, run_id)
    async with httpx.AsyncClient(base_url=stack.local_url, timeout=10) as http:
        async with stack.bus() as bus, EventFeed(bus, run_id, replay=True) as feed:
            yes = await http.post(
                f"/api/runs/{run_id}/signals/approval", json={"decision": "approve"}
            )
            assert yes.status_code == 200 and yes.json()["approved"] is True
            done = await wait_for_run(feed, run_id, 30)
    assert done.status == "completed" and done.result["published"].startswith("posted report")
    assert await _stored_signals(stack, run_id) == {"approval": True}


async def test_rejecting_a_budget_park_cancels_the_run_instead_of_resuming_it(
    stack: Stack,  # noqa: F811
) -> None:
    # the lookup costs 1500 micro-units; a run budget of 1000 parks the agent
    run_id = await stack.publish("alice", "c_park", {"q": "acme"}, budget=1_000)
    async with stack.bus() as bus:
        runs = await run_store(bus)

        async def parked() -> bool:
            record = await runs.get(run_id)
            return record is not None and record.pending_signals() == ["budget-1"]

        await eventually(parked, f"run {run_id} to park on its budget")
    async with httpx.AsyncClient(base_url=stack.local_url, timeout=10) as http:
        no = await http.post(f"/api/runs/{run_id}/signals/budget-1", json={"decision": "reject"})
    assert no.status_code == 200, no.text
    assert no.json()["cancelled"] is True and no.json()["approved"] is False
    async with stack.bus() as bus:
        record = await (await run_store(bus)).get(run_id)
    assert record is not None and record.status == "cancelled"
    assert "budget-1" not in record.signals  # nothing that could resume it was sent
    assert record.error is not None and "rejected by console:operator" in record.error.message


async def test_tokens_never_travel_in_urls(stack: Stack) -> None:  # noqa: F811
    token = stack.tokens["alice"]
    async with httpx.AsyncClient(base_url=stack.remote_url, timeout=10) as http:
        # a token in a query string is refused before anything else, even with a good header
        for url in (
            f"/api/runs?token={token}",
            f"/api/me?access_token={token}",
            "/api/events?token=anything",
            f"/?TOKEN={token}",
            f"/api/runs?run={token}",
            f"/api/runs/{token}",
            f"/static/{token}",
        ):
            refused = await http.get(url, headers=bearer(token))
            assert refused.status_code == 400, url
            error = refused.json()["error"]
            assert "tokens never travel in URLs" in error and "POST /api/login" in error, url
            assert token not in error
        refused = await http.post(f"/api/login?token={token}", json={"token": token})
        assert refused.status_code == 400 and "set-cookie" not in refused.headers
        assert (await http.get("/api/me")).status_code == 401  # nothing signed in
        # the way in: POST the token, get an HttpOnly SameSite=Strict cookie, use it
        login = await http.post("/api/login", json={"token": token})
        assert login.status_code == 200 and login.json() == {"user": "alice"}
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert login.headers["cache-control"] == "no-store"
        assert (await http.get("/api/me")).json()["user"] == "alice"
        # ... or the Authorization header, and ordinary query parameters still work
        fresh = httpx.AsyncClient(base_url=stack.remote_url, timeout=10, headers=bearer(token))
        async with fresh:
            assert (await fresh.get("/api/runs", params={"limit": "5"})).status_code == 200
    # the loopback console refuses them too
    async with httpx.AsyncClient(base_url=stack.local_url, timeout=10) as http:
        refused = await http.get(f"/api/runs?token={token}")
        assert refused.status_code == 400
        assert (await http.get("/api/runs", params={"limit": "5"})).status_code == 200
