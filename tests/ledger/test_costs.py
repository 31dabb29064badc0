"""Costed tools through the runtime and the ledger: held before, captured after, exact."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relaybus.agents.submit import run_store, submit
from relaybus.bus import Bus, Settings, default_topology, ensure
from relaybus.services.ledger.client import LedgerClient

from ..conftest import ROOT, Spawn, child_env, service_process, wait_service

COST = 5  # the `add` tool's price in micro-units


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_values(ledger=True)


@pytest.fixture
def ledger_service(settings: Settings) -> Iterator[None]:
    with service_process(settings, "ledger"):
        yield


@pytest.fixture
async def lbus(settings: Settings, ledger_service: None) -> AsyncIterator[Bus]:
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        await wait_service(bus, "ledger")
        yield bus


async def test_a_replayed_tool_is_charged_once(lbus: Bus, spawn: Spawn, tmp_path: Path) -> None:
    spawn("runtime_agents:ToolUser", RELAYBUS_LEDGER="1")
    done = await submit(
        lbus,
        "tooluser",
        json.dumps({"a": 1, "b": 2, "log": str(tmp_path / "t")}).encode(),
        wait=True,
        timeout_s=30,
    )
    assert done.status == "completed" and done.cost == COST  # retried once, charged once
    record = await (await run_store(lbus)).get(done.run_id)
    assert record is not None and record.cost == COST


async def test_a_run_s_cost_comes_from_its_last_capture_unless_a_child_spent_too(
    lbus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    spawn("runtime_agents:Shopper", RELAYBUS_LEDGER="1")
    spawn("runtime_agents:ShopsThenDelegates", RELAYBUS_LEDGER="1")
    asked: list[bytes] = []

    async def on_query(msg: Any) -> None:
        asked.append(bytes(msg.data))

    await lbus.nc.subscribe(lbus.subjects.service("ledger", "run_cost"), cb=on_query)
    ledger = LedgerClient(lbus)
    log = str(tmp_path / "calls")
    # Given a run whose root task is its only spender: three costed calls
    alone = await submit(
        lbus, "shopper", json.dumps({"n": 3, "log": log}).encode(), wait=True, timeout_s=30
    )
    # Then its cost is what the ledger captured, learned from the last capture's reply
    assert alone.status == "completed" and alone.cost == 3 * COST
    assert asked == []  # nobody asked the ledger for it
    record = await (await run_store(lbus)).get(alone.run_id)
    assert record is not None and record.cost == 3 * COST
    assert (await ledger.run_cost(alone.run_id))["spent"] == 3 * COST
    asked.clear()
    # Given a run whose root spends first, then a child spends twice after it
    shared = await submit(
        lbus, "delegator", json.dumps({"log": log}).encode(), wait=True, timeout_s=30
    )
    # Then the root asks the ledger (its own last capture came before the child's), and the
    # cost counts all three
    assert shared.status == "completed" and shared.cost == 3 * COST
    assert any(alone.run_id.encode() not in q and shared.run_id.encode() in q for q in asked)
    assert (await ledger.run_cost(shared.run_id))["spent"] == 3 * COST


async def test_a_costed_tool_that_failed_once_is_retried_and_charged_once(
    lbus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    spawn("runtime_agents:FlakyToolUser", RELAYBUS_LEDGER="1")
    log = tmp_path / "calls"
    done = await submit(
        lbus,
        "flakytooluser",
        json.dumps({"a": 1, "b": 2, "log": str(log)}).encode(),
        wait=True,
        timeout_s=30,
        budget=COST + 1,  # room for one charge only: the voided hold must not count
    )
    assert done.status == "completed", done.error
    assert done.result == 3 and done.cost == COST
    assert len(log.read_text().splitlines()) == 2  # failed once, ran once more
    holds = await LedgerClient(lbus).query("holds")
    assert not [h for h in holds if h.get("tags", {}).get("run") == done.run_id]


async def test_a_run_over_its_budget_stops_with_a_clear_reason(
    lbus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    spawn("runtime_agents:Shopper", RELAYBUS_LEDGER="1")
    done = await submit(
        lbus,
        "shopper",
        json.dumps({"n": 10, "log": str(log)}).encode(),
        wait=True,
        timeout_s=30,
        budget=3 * COST + 2,
    )
    assert done.status == "failed"
    assert done.error is not None and done.error.startswith("BudgetExceeded: budget run:")
    assert "5 asked, 2 of 17 left" in done.error
    assert len(log.read_text().splitlines()) == 3  # the fourth call never ran
    assert done.cost == 3 * COST


async def test_a_users_statement_equals_the_sum_of_their_runs(
    lbus: Bus, spawn: Spawn, tmp_path: Path, settings: Settings
) -> None:
    spawn("runtime_agents:Shopper", RELAYBUS_LEDGER="1")
    costs = []
    for n in (2, 3, 4):
        done = await submit(
            lbus,
            "shopper",
            json.dumps({"n": n, "log": str(tmp_path / "l")}).encode(),
            sender="user:carol",
            wait=True,
            timeout_s=30,
        )
        costs.append(done.cost)
    assert costs == [2 * COST, 3 * COST, 4 * COST]
    import time

    period = time.strftime("%Y-%m", time.gmtime())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "relaybus.cli",
            "ledger",
            "statement",
            "carol",
            "--period",
            period,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=child_env(settings),
        cwd=ROOT,
        timeout=60,
    )
    statement = json.loads(out.stdout)
    assert statement["total"] == sum(costs)
    assert sorted(statement["by"]["run"].values()) == sorted(costs)
    assert statement["by"]["tool"] == {"add": sum(costs)}
    # the user named as a budget level is the same user (it printed an empty statement)
    cli = [sys.executable, "-m", "relaybus.cli", "ledger", "statement"]
    as_level = subprocess.run(
        [*cli, "user:carol", "--period", period, "--json"],
        capture_output=True,
        text=True,
        env=child_env(settings),
        cwd=ROOT,
        timeout=60,
    )
    assert json.loads(as_level.stdout) == statement
    not_a_user = subprocess.run(
        [*cli, "agent:adder"], capture_output=True, text=True, env=child_env(settings), timeout=60
    )
    assert not_a_user.returncode == 1 and "give USER or user:USER" in not_a_user.stderr


async def test_leased_steps_are_decided_locally_and_settled_exactly(
    lbus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    spawn("runtime_agents:Shopper", RELAYBUS_LEDGER="1", RELAYBUS_LEDGER_LEASE="12")
    ok = await submit(
        lbus, "shopper", json.dumps({"n": 7, "log": str(log)}).encode(), wait=True, timeout_s=30
    )
    assert ok.status == "completed" and ok.cost == 7 * COST  # settled exactly, not in chunks of 12
    over = await submit(
        lbus,
        "shopper",
        json.dumps({"n": 10, "log": str(log)}).encode(),
        wait=True,
        timeout_s=30,
        budget=3 * COST + 2,
    )
    assert (
        over.status == "failed"
        and over.error is not None
        and over.error.startswith("BudgetExceeded")
    )
    assert over.cost == 3 * COST  # the lease shrank to the last step's own cost: never over


async def test_lease_processes_race_without_overspending(lbus: Bus, settings: Settings) -> None:
    from relaybus.services.ledger.ops import Budget

    await LedgerClient(lbus).set_budget("lb", Budget(level="run:LEASED", limit=5003))
    code = (
        "import asyncio,os,sys\n"
        "from relaybus.bus import Bus, Settings\nfrom relaybus.services.ledger.errors import BudgetExceeded\n"
        "from relaybus.services.ledger.client import LedgerClient\n"
        "from relaybus.services.ledger.lease import Lease\n"
        "async def main():\n"
        "    async with Bus(Settings.from_env(os.environ)) as bus:\n"
        "        lease = Lease(LedgerClient(bus), payer='user:e', payee='tool:x', levels=['run:LEASED'], chunk=64)\n"
        "        n = 0\n"
        "        for _ in range(100000):\n"
        "            try:\n"
        "                await lease.spend(1)\n"
        "            except BudgetExceeded:\n"
        "                break\n"
        "            n += 1\n"
        "        await lease.settle()\n"
        "        print(n)\n"
        "asyncio.run(main())\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=child_env(settings),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    decided = sum(int(p.communicate(timeout=120)[0]) for p in procs)
    rows = await LedgerClient(lbus).query("levels", level="run:LEASED")
    assert decided == 5003 and rows[0]["spent"] == 5003 and rows[0]["held"] == 0


async def test_the_price_table_sets_what_a_tool_costs(
    lbus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[tools]\nadd = 9\n\n[models."tiny"]\ninput = 1\noutput = 3\n')
    spawn("runtime_agents:ToolUser", RELAYBUS_LEDGER="1", RELAYBUS_PRICES=str(prices))
    done = await submit(
        lbus,
        "tooluser",
        json.dumps({"a": 1, "b": 2, "log": str(tmp_path / "t")}).encode(),
        wait=True,
        timeout_s=30,
    )
    assert done.status == "completed" and done.cost == 9


def test_price_table_errors_name_the_problem(tmp_path: Path) -> None:
    from relaybus.bus import ConfigError
    from relaybus.services.ledger.prices import load_prices

    bad = tmp_path / "p.toml"
    bad.write_text("[tools]\nadd = -1\n")
    with pytest.raises(ConfigError, match=r"prices must be >= 0 micro-units \(tools.add\)"):
        load_prices(bad)
    bad.write_text("[tools]\nadd = 1.5\n")
    with pytest.raises(ConfigError, match=r"Expected `int`, got `float` - at `\$.tools\[...\]`"):
        load_prices(bad)
    bad.write_text("[toolz]\nadd = 1\n")
    with pytest.raises(ConfigError, match="unknown field `toolz`"):
        load_prices(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_prices(tmp_path / "missing.toml")
    table = load_prices(None)
    assert table.tool("x", 4) == 4


async def test_a_parked_run_continues_once_its_budget_is_raised(
    lbus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    from relaybus.agents.control import send_signal
    from relaybus.bus.feed import EventFeed
    from relaybus.services.ledger.ops import Budget

    log = tmp_path / "calls"
    spawn("runtime_agents:ParkingShopper", RELAYBUS_LEDGER="1")
    outcome = await submit(
        lbus, "pshopper", json.dumps({"n": 5, "log": str(log)}).encode(), budget=2 * COST + 1
    )
    async with EventFeed(lbus, outcome.run_id, replay=True) as feed:
        while (event := await feed.next(30)) is not None and event.kind != "parked":
            pass
        assert event is not None and "--signal budget-1" in event.detail
        await LedgerClient(lbus).set_budget(
            "raise", Budget(level=f"run:{outcome.run_id}", limit=100)
        )
        await send_signal(lbus, outcome.run_id, "budget-1")
        from relaybus.agents.submit import wait_for_run

        done = await wait_for_run(feed, outcome.run_id, 30)
    assert done.status == "completed" and done.result == sum(range(5)), done
    assert done.cost == 5 * COST
    assert len(log.read_text().splitlines()) == 5  # parked and replayed: nothing ran twice


async def test_a_parked_run_whose_budget_resume_is_rejected_stops(
    lbus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    from relaybus.agents.control import send_signal
    from relaybus.agents.submit import wait_for_run
    from relaybus.bus.feed import EventFeed
    from relaybus.services.ledger.ops import Budget

    log = tmp_path / "calls"
    spawn("runtime_agents:ParkingShopper", RELAYBUS_LEDGER="1")
    outcome = await submit(
        lbus, "pshopper", json.dumps({"n": 5, "log": str(log)}).encode(), budget=2 * COST + 1
    )
    async with EventFeed(lbus, outcome.run_id, replay=True) as feed:
        while (event := await feed.next(30)) is not None and event.kind != "parked":
            pass
        assert event is not None
        # even with the budget raised, a `false` answer (the console's Reject) stops the run
        await LedgerClient(lbus).set_budget(
            "raise", Budget(level=f"run:{outcome.run_id}", limit=100)
        )
        await send_signal(lbus, outcome.run_id, "budget-1", False)
        done = await wait_for_run(feed, outcome.run_id, 30)
    assert done.status == "cancelled" and "rejected" in (done.error or ""), done
    assert len(log.read_text().splitlines()) == 2  # nothing ran after the rejection


@pytest.mark.slow
async def test_a_rate_limited_step_waits_for_its_window_and_spends_no_attempt(
    lbus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    """A step over its rate limit used to nak its task, each refusal an attempt: a run that
    met the limit a few times was dead-lettered and failed. With one attempt allowed, a run
    whose second step must wait out the minute's window still completes, charged once a step."""
    log = tmp_path / "calls"
    await LedgerClient(lbus).set_rate_limit("rate-1", "agent:shopper/tool:add", rpm=1)
    spawn("runtime_agents:Shopper", RELAYBUS_LEDGER="1", RELAYBUS_MAX_DELIVER="1")
    ok = await submit(
        lbus, "shopper", json.dumps({"n": 2, "log": str(log)}).encode(), wait=True, timeout_s=120
    )
    assert ok.status == "completed", ok.error
    assert ok.result == 1 and ok.cost == 2 * COST
    assert log.read_text().split() == ["add", "add"]  # each call once
