"""A partitioned ledger: one fenced writer process per partition over a real server. Holds that
span partitions are all or nothing, nothing is charged twice, no partition's budget is overspent,
and a writer killed mid-stream loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest

from relaybus.bus import Bus, ConnectionFailed, Settings
from relaybus.bus.streams import read_subject
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import BudgetExceeded, LedgerError
from relaybus.services.ledger.model import Entry, State, apply, decide
from relaybus.services.ledger.ops import (
    Budget,
    Capture,
    Hold,
    RateLimit,
    SetBudget,
    SetRateLimit,
    Transfer,
    Void,
)
from relaybus.services.ledger.partitions import owner, split_hold
from relaybus.services.ledger.service import LedgerWriter

from ..conftest import ROOT, child_env

PARTITIONS = 2


def named(prefix: str, partition: str, count: int = PARTITIONS) -> str:
    """The first `<prefix>N` that lives in `partition`."""
    return next(
        f"{prefix}{i}" for i in itertools.count() if owner(f"{prefix}{i}", count) == partition
    )


class Writers:
    """`relaybus service ledger --partition pK` for each partition, started and killed by pid."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings, self.count = settings, count
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, partition: str) -> None:
        self.procs[partition] = subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", "service", "ledger", "--partition", partition],
            env=child_env(self.settings, RELAYBUS_LEDGER_PARTITIONS=str(self.count)),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )

    def kill9(self, partition: str) -> None:
        self.procs[partition].send_signal(signal.SIGKILL)
        self.procs[partition].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)


@pytest.fixture
def writers(settings: Settings) -> Iterator[Writers]:
    started = Writers(settings, PARTITIONS)
    for i in range(PARTITIONS):
        started.start(f"p{i}")
    yield started
    started.stop()


async def answering(ledger: LedgerClient) -> None:
    for _ in range(150):  # bounded: the writer processes are starting
        try:
            if (await ledger.query("ping"))["partitions"] == ledger.partitions:
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the ledger partitions did not answer")


@pytest.fixture
async def ledger(bus: Bus, writers: Writers) -> AsyncIterator[LedgerClient]:
    client = LedgerClient(bus, partitions=PARTITIONS)
    await answering(client)
    yield client


async def journal_ids(bus: Bus, partition: str) -> list[str]:
    ids = []
    subject = bus.subjects.ledger_entry(partition)
    for _, data in await read_subject(bus, bus.subjects.stream("LEDGER"), subject):
        decoded = msgspec.msgpack.decode(data, type=Entry | list[Entry])
        ids += [e.op.id for e in (decoded if isinstance(decoded, list) else [decoded])]
    return ids


def test_a_hold_is_split_by_the_partitions_of_its_levels() -> None:
    user, agent = named("user:u", "p0"), named("agent:a", "p1")
    hold = Hold(id="h1", payer=user, payee="tool:x", amount=5, levels=[user, agent], ttl_s=9)
    parts = split_hold(hold, PARTITIONS)
    assert list(parts) == ["p0", "p1"]
    assert parts["p0"].levels == [user] and parts["p0"].shares == ["p1"]
    assert parts["p1"].levels == [agent] and parts["p1"].share == "p0"
    assert parts["p1"].ttl_s > parts["p0"].ttl_s  # a share outlives its home
    assert split_hold(hold, 1) == {"p0": hold}


async def test_a_hold_spanning_partitions_is_all_or_nothing_and_charged_once(
    ledger: LedgerClient, settings: Settings
) -> None:
    # Given a user budget in p0 and an agent budget in p1
    user, agent = named("user:u", "p0"), named("agent:a", "p1")
    await ledger.set_budget("b-user", Budget(level=user, limit=1000))
    await ledger.set_budget("b-agent", Budget(level=agent, limit=100))
    # When a hold fits the user's budget but not the agent's
    with pytest.raises(BudgetExceeded, match=agent):
        await ledger.hold("h1", user, "tool:x", 150, [user, agent])
    # Then nothing stays held anywhere: the part p0 placed was voided
    levels = {row["level"]: row for row in await ledger.query("levels")}
    assert levels[user]["held"] == 0 and (levels[agent]["held"], levels[agent]["spent"]) == (0, 0)
    assert await ledger.query("holds") == []
    # When a hold that fits both is placed and captured
    hold_id = "g1"
    await ledger.hold(hold_id, user, "tool:x", 80, [user, agent])
    assert [h["id"] for h in await ledger.query("holds")] == [hold_id]  # listed once
    # (captured by another process, which never saw the hold: it finds the hold's home)
    async with Bus(settings, name="another-process") as other:
        captured = await LedgerClient(other, partitions=PARTITIONS).capture("c1", hold_id, 60)
    assert captured["captured"] == 60 and captured["shares"] == ["p1"]
    assert "levels" not in captured  # no `run:` level: no other level's spend is told
    again = await ledger.capture("c1", hold_id, 60)  # retried through the home: the same
    assert again["captured"] == 60 and "levels" not in again
    # Then both levels count the spend, and the money moved once
    levels = {row["level"]: row for row in await ledger.query("levels")}
    assert (levels[user]["spent"], levels[user]["held"]) == (60, 0)
    assert (levels[agent]["spent"], levels[agent]["held"]) == (60, 0)
    balances = {row["account"]: row["balance"] for row in await ledger.query("balance")}
    assert balances == {user: -60, "tool:x": 60}
    # and the refused hold, retried with the same id once the agent's budget is raised (as a
    # parked task resumes), is decided afresh: its undone p0 part is placed again
    await ledger.set_budget("b-agent-2", Budget(level=agent, limit=1000))
    retried = "h1"
    await ledger.hold(retried, user, "tool:x", 150, [user, agent])
    levels = {row["level"]: row for row in await ledger.query("levels")}
    assert levels[user]["held"] == 150 and levels[agent]["held"] == 150
    # and a retry of a hold voided since is placed afresh (its parts' results are forgotten)
    await ledger.void("v1", retried)
    await ledger.hold(retried, user, "tool:x", 150, [user, agent])
    levels = {row["level"]: row for row in await ledger.query("levels")}
    assert levels[user]["held"] == 150 and levels[agent]["held"] == 150
    # while a retry of a hold captured since is refused, and charges and holds nothing more
    await ledger.capture("c2", retried, 100)
    with pytest.raises(LedgerError, match="has since been captured; a new hold needs a new id"):
        await ledger.hold(retried, user, "tool:x", 150, [user, agent])
    levels = {row["level"]: row for row in await ledger.query("levels")}
    assert (levels[user]["spent"], levels[user]["held"]) == (160, 0)
    assert (levels[agent]["spent"], levels[agent]["held"]) == (160, 0)


async def test_concurrent_spenders_across_partitions_never_overspend_a_shared_budget(
    bus: Bus, ledger: LedgerClient
) -> None:
    # Given one agent budget in p1 that 32 users, spread over both partitions, spend against
    agent = named("agent:shared", "p1")
    await ledger.set_budget("b-shared", Budget(level=agent, limit=2_000))
    users = [f"user:s{i}" for i in range(32)]
    assert {owner(u, PARTITIONS) for u in users} == {"p0", "p1"}
    spent: dict[str, int] = dict.fromkeys(users, 0)

    async def spender(user: str) -> None:
        for step in range(20):
            hold_id = f"{user}-h{step}"
            try:
                await ledger.hold(hold_id, user, "tool:x", 7, [user, agent])
            except BudgetExceeded:
                return
            await ledger.capture(f"{user}-c{step}", hold_id, 7)
            spent[user] += 7

    await asyncio.wait_for(asyncio.gather(*(spender(u) for u in users)), 120)
    # Then the shared budget went to its last fitting unit and never over
    total = sum(spent.values())
    assert 2_000 - 7 < total <= 2_000
    levels = {row["level"]: row for row in await ledger.query("levels")}
    assert levels[agent]["spent"] == total and levels[agent]["held"] == 0
    assert all(levels[u]["spent"] == spent[u] and levels[u]["held"] == 0 for u in users)
    balances = {row["account"]: row["balance"] for row in await ledger.query("balance")}
    assert balances["tool:x"] == total
    # and each partition's journal holds each operation once
    for partition in ("p0", "p1"):
        ids = await journal_ids(bus, partition)
        assert len(ids) == len(set(ids))


async def test_a_partition_writer_killed_mid_stream_loses_nothing_and_doubles_nothing(
    bus: Bus, ledger: LedgerClient, writers: Writers
) -> None:
    user, agent = named("user:k", "p0"), named("agent:k", "p1")
    await ledger.set_budget("b-k", Budget(level=agent, limit=10_000))
    acknowledged: list[str] = []

    async def until_answered(send: object) -> object:
        for _ in range(150):  # bounded: the writer is restarted below
            try:
                return await send()  # type: ignore[operator]
            except (LedgerError, ConnectionFailed):
                await asyncio.sleep(0.1)
        raise AssertionError("the ledger never answered again")

    async def spender(n: int) -> None:
        for i in range(10):
            hold_id = f"k{n}-{i}"
            await until_answered(
                lambda h=hold_id: ledger.hold(h, user, "tool:x", 10, [user, agent])
            )
            acknowledged.append(hold_id)
            await until_answered(lambda h=hold_id: ledger.capture(f"{h}-c", h, 10))

    running = asyncio.gather(*(spender(n) for n in range(16)))
    while len(acknowledged) < 40:  # bounded by the spenders' own steps
        await asyncio.sleep(0.01)
    # When the writer of the agent's partition is killed -9 mid-stream, and started again
    writers.kill9("p1")
    writers.start("p1")
    await asyncio.wait_for(running, 120)
    # Then every step is charged exactly once on both levels and in the accounts
    levels = {row["level"]: row for row in await ledger.query("levels")}
    assert (levels[agent]["spent"], levels[agent]["held"]) == (1600, 0)
    assert (levels[user]["spent"], levels[user]["held"]) == (1600, 0)
    balances = {row["account"]: row["balance"] for row in await ledger.query("balance")}
    assert balances == {user: -1600, "tool:x": 1600}
    for partition in ("p0", "p1"):
        ids = await journal_ids(bus, partition)
        assert len(ids) == len(set(ids)), f"an operation was applied twice in {partition}"


def test_a_share_that_lapsed_before_its_home_still_takes_the_home_s_capture() -> None:
    # Given a share placed at t=0 and its home placed only at t=100 (the first try of the home
    # went unanswered, the caller's retry placed it), so the share lapses first
    share = State()
    part = Hold(id="h", payer="user:u", payee="tool:x", amount=100, levels=["agent:a"])
    part = msgspec.structs.replace(part, ttl_s=360.0, share="p0")
    apply(share, _entry(decide(share, part, 0.0)))
    # When the home's capture reaches the share after it lapsed
    outcome = decide(share, Capture(id="c", transfer="h", amount=100), 370.0)
    apply(share, _entry(outcome))
    # Then the share's level counts the spend the home charged, and holds nothing
    level = share.levels["agent:a"]
    assert (level.spent, level.held) == (100, 0)
    # and a void of a lapsed share is taken too (the home voided), changing nothing
    apply(
        share,
        _entry(
            decide(
                share,
                Hold(
                    id="g",
                    payer="user:u",
                    payee="t",
                    amount=1,
                    levels=["agent:a"],
                    share="p0",
                    ttl_s=1.0,
                ),
                400.0,
            )
        ),
    )
    apply(share, _entry(decide(share, Void(id="v", transfer="g"), 500.0)))
    assert share.levels["agent:a"].held == 0


def test_an_undone_part_gives_back_its_step_and_its_rate_limit_request() -> None:
    # Given a level allowing one step and a rate key allowing one request a minute
    state = State()
    apply(
        state,
        _entry(decide(state, SetBudget(id="b", budget=Budget(level="agent:a", max_steps=1)), 0.0)),
    )
    apply(state, _entry(decide(state, SetRateLimit(id="r", limit=RateLimit(key="k", rpm=1)), 0.0)))
    hold = Hold(id="h", payer="user:u", payee="t", amount=5, levels=["agent:a"], rate="k")
    apply(state, _entry(decide(state, hold, 1.0)))
    # When the part is undone (another partition refused the hold)
    apply(state, _entry(decide(state, Void(id="u", transfer="h", undo=True), 2.0)))
    apply(state, _entry(decide(state, Void(id="u2", transfer="h", undo=True), 2.5)))  # twice
    # Then the same hold, retried, is decided afresh and fits the step and the rate limit again
    placed = decide(state, hold, 3.0)
    assert isinstance(placed, Entry)
    apply(state, placed)
    assert state.levels["agent:a"].steps == 1 and state.holds["h"].state == "held"


def _entry(decided: object) -> Entry:
    assert isinstance(decided, Entry), decided
    return decided


async def test_a_hold_refused_for_any_reason_leaves_no_part_behind(ledger: LedgerClient) -> None:
    # Given a user whose account is in EUR (home p0), and an agent level in p1
    user, agent = named("user:eur", "p0"), named("agent:eur", "p1")
    await ledger.hold("first", user, "tool:x", 5, [user], currency="EUR")
    # When a USD hold on both levels is refused by the home (currency), not by a budget
    with pytest.raises(LedgerError, match="is in EUR, not USD"):
        await ledger.hold("usd", user, "tool:x", 5, [user, agent])
    # Then the agent's part placed in p1 is undone: nothing stays reserved there
    levels = {row["level"]: row for row in await ledger.query("levels")}
    assert (levels[agent]["held"], levels[agent]["steps"]) == (0, 0)


async def test_a_writer_refuses_a_partition_count_other_than_the_ledger_s(bus: Bus) -> None:
    # Given a ledger started with one partition, which has journaled an entry
    one = LedgerWriter(bus, partitions=1)
    await one.check_layout()
    await one.rebuild()
    await one.write(Transfer(id="t1", payer="a", payee="b", amount=5))
    # When a writer starts with RELAYBUS_LEDGER_PARTITIONS=2 over it
    two = LedgerWriter(bus, "p1", partitions=2)
    # Then it refuses, naming the count to set (budgets would otherwise vanish)
    with pytest.raises(LedgerError, match=r"has 1 partition\(s\), but .* is 2: set it to 1"):
        await two.check_layout()
