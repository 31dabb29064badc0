"""The console's numbers over HTTP against the real stack: the runs list and the run page show
the same steps, cost, attempts, failures and duration for a run that fans out — while it
waits for its approval and after it ended — and once it ended it waits for nothing. An
ordinary retry is shown as a retry, never as a takeover after a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from relaybus.agents.observe import ledger_run_cost
from relaybus.bus.feed import EventFeed

from .conftest import Stack
from .test_access import eventually, waiting_for_approval

SHARED = (
    *("status", "steps", "cost", "cost_check", "attempts", "tasks", "failures"),
    *("duration_s", "input_tokens", "output_tokens", "waiting_for"),
)


async def both(http: httpx.AsyncClient, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's row on the runs list and the run page's answer."""
    rows = (await http.get("/api/runs", params={"limit": 100})).json()
    (row,) = [r for r in rows if r["run_id"] == run_id]
    view = (await http.get(f"/api/runs/{run_id}")).json()
    return row, view


def assert_same(row: dict[str, Any], view: dict[str, Any]) -> None:
    page = view["run"]
    assert {k: row[k] for k in SHARED} == {k: page[k] for k in SHARED}
    trace = view["trace"]  # the tree the page draws adds up to the same
    assert (trace["steps"], trace["cost"], trace["attempts"]) == (
        page["steps"],
        page["cost"],
        page["attempts"],
    )
    assert sum(t["cost"] for t in view["graph"]["tasks"]) == page["cost"]
    assert sum(len(t["calls"]) for t in view["graph"]["tasks"]) == page["steps"]
    assert view["pending"] == page["waiting_for"]


async def test_the_runs_list_and_the_run_page_agree_while_a_fan_out_waits_and_after_it_ends(
    stack: Stack,
) -> None:
    # Given alice's run that fans out to three workers, is reviewed, then waits for approval
    run_id = await stack.publish(
        "alice", "c_plan", {"items": ["acme", "globex", "initech"], "approval": True}
    )
    await waiting_for_approval(stack, run_id)
    async with stack.bus() as bus:
        spent_waiting = await ledger_run_cost(bus, run_id)
    async with httpx.AsyncClient(base_url=stack.local_url, timeout=10) as http:
        # While it waits: the same numbers on both pages, and they are the run's so far
        row, view = await both(http, run_id)
        assert_same(row, view)
        # plan + 3 lookups + the score (the refused mail was never run)
        assert row["steps"] == 5 and row["tasks"] == 5
        assert row["cost"] == spent_waiting == 3 * 1_500 + 500
        assert row["cost_check"] == "matches the ledger"
        assert row["waiting_for"] == ["approval"] and row["duration_s"] is None

        # When it is approved and ends
        decided = await http.post(
            f"/api/runs/{run_id}/signals/approval", json={"decision": "approve"}
        )
        assert decided.status_code == 200, decided.text

        async def ended() -> bool:
            row, view = await both(http, run_id)
            return row["status"] == view["run"]["status"] == "completed" and any(
                e["kind"] == "completed" for e in view["events"]
            )

        await eventually(ended, f"run {run_id} to complete")
        row, view = await both(http, run_id)
        assert_same(row, view)
        # Then both count the publisher's post too, cost what the ledger captured, and the
        # run waits for nothing any more
        assert row["steps"] == 6 and row["cost"] == 3 * 1_500 + 500 + 800
        assert row["waiting_for"] == [] and view["pending"] == []
        assert row["duration_s"] is not None and row["duration_s"] > 0
        # And asked again (its numbers now kept), the list still says the same
        again, _ = await both(http, run_id)
        assert {k: again[k] for k in SHARED} == {k: row[k] for k in SHARED}
        # The reviewer completed although its mail outside the team was refused
        (review,) = [t for t in view["graph"]["tasks"] if t["agent"] == "c_review"]
        assert review["status"] == "completed" and review["refused"] == 1
        (node,) = [n for n in view["graph"]["nodes"] if n["id"] == "c_review"]
        assert node["status"] == "completed" and node["notes"] == ["1 refused"]


async def test_an_ordinary_retry_is_labelled_a_retry_not_a_takeover_after_a_crash(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a task whose first attempt fails (its upstream is down) and is retried
    block = tmp_path / "upstream-down"
    block.write_text("down")
    run_id = await stack.publish("alice", "c_flaky", {"block": str(block)})
    async with stack.bus() as bus, EventFeed(bus, run_id, replay=True) as feed:
        while (event := await feed.next(30)) is not None and event.kind != "retried":
            pass
    assert event is not None, "the first attempt was never retried"
    block.unlink()  # the upstream is back: the next attempt completes
    async with httpx.AsyncClient(base_url=stack.local_url, timeout=10) as http:

        async def completed() -> dict[str, Any] | None:
            view = (await http.get(f"/api/runs/{run_id}")).json()
            return view if view["run"]["status"] == "completed" else None

        view = await eventually(completed, f"run {run_id} to complete")
        await asyncio.sleep(0.3)
        view = (await http.get(f"/api/runs/{run_id}")).json()
    # Then the run page calls the redelivery a retry after the failure it follows
    resumed = [e for e in view["events"] if e["kind"] == "resumed"]
    assert resumed and all(
        e["detail"].startswith("retried after attempt ") and "RuntimeError" in e["detail"]
        for e in resumed
    ), resumed
    assert not [e for e in view["events"] if "taken over" in e["detail"]]
    (task,) = view["graph"]["tasks"]
    assert task["status"] == "completed" and task["attempts"] == len(resumed) + 1
    assert view["run"]["failures"] == len(resumed)


async def test_a_failed_runs_page_shows_where_the_handler_failed(
    stack: Stack, tmp_path: Path
) -> None:
    block = tmp_path / "upstream-down-for-good"
    block.write_text("down")
    run_id = await stack.publish("alice", "c_flaky", {"block": str(block)})
    async with httpx.AsyncClient(base_url=stack.local_url, timeout=10) as http:

        async def failed() -> dict[str, Any] | None:
            view = (await http.get(f"/api/runs/{run_id}")).json()
            return view if view["run"]["status"] == "failed" else None

        view = await eventually(failed, f"run {run_id} to fail", timeout_s=90)
    run = view["run"]
    assert run["error"] == "RuntimeError: the upstream is down"
    assert (
        "in handle" in run["traceback"]
        and 'raise RuntimeError("the upstream is down")' in (run["traceback"])
    )
