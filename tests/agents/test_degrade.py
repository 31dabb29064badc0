"""Graceful degradation on a budget (agents/degrade.py), each answer with real processes: the
ledger service, agents, a scripted model over HTTP; each shown in the run's events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from relaybus.agents.llm import ScriptedModel, serve_model
from relaybus.agents.messages import TimerFired
from relaybus.agents.submit import submit
from relaybus.agents.waiting import await_outcome
from relaybus.bus import Bus, Envelope, Event, Settings, default_topology, ensure
from relaybus.bus.envelope import derived_id
from relaybus.bus.feed import EventFeed
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.model import Budget

from ..conftest import Spawn, consuming, service_process, wait_service

PRICES = """
[models.big]
input = 100
output = 200
[models.medium]
input = 20
output = 40
[models.small]
input = 1
output = 2
"""


@pytest.fixture
async def model_url() -> AsyncIterator[str]:
    server = await serve_model(ScriptedModel.from_rules([]), "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    server.close()
    await server.wait_closed()


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, model_url: str) -> Settings:
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    return settings.with_values(ledger=True, prices=prices, llm_base_url=model_url)


@pytest.fixture
def ledger(settings: Settings) -> Iterator[None]:
    with service_process(settings, "ledger"):
        yield


@pytest.fixture
async def lbus(settings: Settings, ledger: None) -> AsyncIterator[Bus]:
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        await wait_service(bus, "ledger")
        yield bus


async def events_until(bus: Bus, run_id: str, kind: str, timeout_s: float = 30.0) -> list[Event]:
    """The run's events up to the first of `kind` (bounded)."""
    seen: list[Event] = []
    deadline = time.monotonic() + timeout_s
    async with EventFeed(bus, run_id, replay=True) as feed:
        while time.monotonic() < deadline:
            event = await feed.next(deadline - time.monotonic())
            if event is None:
                break
            seen.append(event)
            if event.kind == kind:
                return seen
    raise AssertionError(f"no {kind} event in {[e.kind for e in seen]}")


async def fire_early(bus: Bus, queued: Event, timer_id: str) -> None:
    """Deliver a queued task's timer now, as its agent would (a timer from anyone else is
    refused): the period "ends" without waiting for midnight."""
    timer = Envelope(
        id=derived_id(timer_id, "early"),
        run_id=queued.run_id,
        kind="signal",
        sender="queueing",
        recipient="queueing",
        payload=msgspec.json.encode(TimerFired(timer=timer_id, due=time.time())),
        parent_id=queued.envelope_id,
        created_at=time.time(),
    )
    async with Bus(bus.settings, name="timer", agent="queueing") as agent:
        await agent.publish(timer, subject=agent.subjects.timer("queueing"))


async def test_an_llm_call_over_budget_falls_back_to_the_configured_cheaper_model(
    lbus: Bus, spawn: Spawn
) -> None:
    spawn("degrade_agents:Frugal")
    await consuming(lbus, "frugal")
    # big's hold is thousands of micro-units, medium's hundreds, small's tens
    outcome = await submit(lbus, "frugal", b"{}", wait=True, timeout_s=60, budget=300)
    assert outcome.status == "completed", outcome
    assert outcome.result["model"] == "small"  # type: ignore[index]
    events = await events_until(lbus, outcome.run_id, "completed")
    degraded = [e.detail for e in events if e.kind == "degraded"]
    assert [d.split(":")[0] for d in degraded] == ["big → medium", "medium → small"]
    assert all("BudgetExceeded" not in d and "would go over" in d for d in degraded)
    assert [e.detail for e in events if e.kind == "llm"] == ["small"]
    spent = await LedgerClient(lbus).run_cost(outcome.run_id)
    assert 0 < spent["spent"] <= 300 and outcome.cost == spent["spent"]


async def test_over_budget_the_task_retries_later_and_goes_on_once_the_budget_is_raised(
    lbus: Bus, spawn: Spawn
) -> None:
    spawn("degrade_agents:Retrying")
    await consuming(lbus, "retrying")
    accepted = await submit(lbus, "retrying", b"{}", budget=10)
    retried = await events_until(lbus, accepted.run_id, "retried")
    assert "would go over" in (retried[-1].error.message if retried[-1].error else "")
    await LedgerClient(lbus).set_budget(
        "raise-1", Budget(level=f"run:{accepted.run_id}", limit=1000)
    )
    outcome = await await_outcome(lbus, accepted.run_id, 30)
    assert outcome.status == "completed" and outcome.result == "quoted", outcome
    assert outcome.cost == 50  # charged once, although tried several times


async def test_over_a_periodic_budget_the_task_queues_until_the_period_resets(
    lbus: Bus, spawn: Spawn
) -> None:
    ledger = LedgerClient(lbus)
    await ledger.set_budget("daily", Budget(level="user:dev", limit=10, period="daily"))
    spawn("degrade_agents:Queueing")
    await consuming(lbus, "queueing")
    accepted = await submit(lbus, "queueing", b"{}", sender="user:dev")
    (*_, queued) = await events_until(lbus, accepted.run_id, "queued")
    midnight = (datetime.now(UTC) + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    assert f"user:dev@{datetime.now(UTC):%Y-%m-%d}" in queued.detail
    assert f"resets at {midnight.isoformat(timespec='seconds')}" in queued.detail
    assert (
        await await_outcome(lbus, accepted.run_id, 1.0)
    ).status == "timeout"  # waiting, not failed
    # the durable timer is armed for the first second of the new period
    timer_id = derived_id(queued.envelope_id, "budget-reset", "1")
    stored = await lbus.js.get_last_msg(
        lbus.subjects.stream("TIMERS"), lbus.subjects.timer("queueing")
    )
    fired = msgspec.json.decode(stored.data or b"", type=TimerFired)
    assert fired.timer == timer_id and fired.due == midnight.timestamp() + 1
    # when it fires (here: early, with the budget raised as the new period would leave it)
    await ledger.set_budget("daily-2", Budget(level="user:dev", limit=1000, period="daily"))
    await fire_early(lbus, queued, timer_id)
    outcome = await await_outcome(lbus, accepted.run_id, 30)
    assert outcome.status == "completed" and outcome.result == "quoted", outcome


def test_an_unknown_policy_is_refused_by_name() -> None:
    from relaybus.agents import Agent

    with pytest.raises(ValueError, match="'fail', 'park', 'retry' or 'queue', not 'later'"):

        class Wrong(Agent):
            name = "wrong"
            on_budget_exceeded = "later"


async def test_a_call_no_period_can_pay_for_is_parked_not_queued_for_ever(
    lbus: Bus, spawn: Spawn
) -> None:
    ledger = LedgerClient(lbus)
    await ledger.set_budget("daily", Budget(level="user:dev", limit=10, period="daily"))
    spawn("degrade_agents:Queueing")
    await consuming(lbus, "queueing")
    accepted = await submit(lbus, "queueing", b"{}", sender="user:dev")
    (*_, queued) = await events_until(lbus, accepted.run_id, "queued")
    timer_id = derived_id(queued.envelope_id, "budget-reset", "1")
    # the period "resets" (the timer fires), and the 50 the call costs still exceeds all 10
    await fire_early(lbus, queued, timer_id)
    (*before, parked) = await events_until(lbus, accepted.run_id, "parked")
    assert [e.kind for e in before].count("queued") == 1
    assert "raise the budget, then `relaybus approve" in parked.detail


def test_a_wait_for_a_timer_alone_holds_until_the_timer_fires() -> None:
    from relaybus.agents.journal import Journal, Wait

    journal = Journal(run_id="r", task_id="t", agent="a", task=b"", waiting=Wait(timer="x"))
    assert not journal.satisfied()
    journal.timers.append("x")
    assert journal.satisfied()
