"""The fault suite's tools: a fleet of real processes to kill -9 and restart, and the checks
every fault test ends with (each run ended, each effect once, no budget overspent, audit complete)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from relaybus.agents.submit import run_store, submit
from relaybus.bus import Bus, ConnectionFailed, Settings
from relaybus.services.identity.client import IdentityClient, read_audit, write_agent_key
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.ops import Budget
from relaybus.services.runs.state import ENDED, RunRecord

from ..conftest import ROOT, child_env
from ..fault_agents import POLICY, RUN_COST, SPECS

USER = "alice"


@dataclass
class Fleet:
    """Named processes started by this test, each killable with SIGKILL and restartable."""

    settings: Settings
    argv: dict[str, list[str]] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)

    def add_agent(self, name: str, spec: str, **env: str) -> None:
        self._add(name, ["agent", "run", spec], env)

    def add_service(self, name: str, service: str = "", **env: str) -> None:
        """`name` for the fleet (e.g. `identity#1`, a second replica of `service`)."""
        self._add(name, ["service", service or name], env)

    def _add(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.argv[name] = [sys.executable, "-m", "relaybus.cli", *args]
        self._env = getattr(self, "_env", {})
        self._env[name] = env
        self.start(name)

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(
            self.argv[name],
            env=child_env(self.settings, **self._env[name]),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            self.kills[name] += 1

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def chaos(
    fleet: Fleet,
    victims: list[str],
    until: asyncio.Event,
    *,
    max_kills: int,
    max_s: float,
    seed: int,
    pause_s: tuple[float, float] = (0.4, 1.2),
    down_s: tuple[float, float] = (0.1, 0.6),
) -> None:
    """Kill -9 a random victim, start it again after a short outage; bounded in count and time."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    for _ in range(max_kills):
        if until.is_set() or loop.time() > deadline:
            return
        await asyncio.sleep(rng.uniform(*pause_s))
        victim = rng.choice(victims)
        fleet.kill(victim)
        await asyncio.sleep(rng.uniform(*down_s))
        fleet.start(victim)


async def register(bus: Bus, settings: Settings, user_budget: int) -> str:
    """Register the pipeline's agents and the user; returns the user's token."""
    client = IdentityClient(bus)
    home = settings.home.resolve()
    for name, (scopes, handoff) in POLICY.items():
        await client.add_agent(name, write_agent_key(home, name).verify_key, scopes, handoff)
    await client.add_user(USER, ["fault"], [])
    await LedgerClient(bus).set_budget(
        "budget-alice", Budget(level=f"user:{USER}", limit=user_budget)
    )
    return str((await client.issue_token(USER))["token"])


def start_pipeline(fleet: Fleet, replicas: int = 2, **env: str) -> list[str]:
    names = []
    for agent, spec in SPECS.items():
        for i in range(replicas):
            fleet.add_agent(f"{agent}#{i}", spec, **env)
            names.append(f"{agent}#{i}")
    return names


async def submit_run(
    bus: Bus, n: int, log: Path, token: str | None, attempts: int = 20
) -> str | None:
    """Submit one run; a refusal while a service restarts is retried (bounded). None: never accepted."""
    payload = json.dumps({"log": str(log), "n": n}).encode()
    for _ in range(attempts):
        try:
            outcome = await submit(
                bus,
                "f_entry",
                payload,
                sender=f"user:{USER}",
                token=token,
                budget=RUN_COST,
            )
            return outcome.run_id
        except ConnectionFailed:
            await asyncio.sleep(0.5)
    return None


async def wait_all_ended(bus: Bus, run_ids: list[str], timeout_s: float) -> dict[str, RunRecord]:
    """Every run's record once all have ended, or whatever they are at the deadline."""
    runs = await run_store(bus)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    records: dict[str, RunRecord] = {}
    while True:
        for run_id in run_ids:
            if run_id in records and records[run_id].status in ENDED:
                continue
            try:
                record = await runs.get(run_id)
            except ConnectionFailed:
                continue
            if record is not None:
                records[run_id] = record
        ended = [r for r in records.values() if r.status in ENDED]
        if len(ended) == len(run_ids) or loop.time() > deadline:
            return records
        await asyncio.sleep(0.5)


async def describe_run(bus: Bus, run_id: str, record: RunRecord | None) -> str:
    """What a stuck run's record, events and journal say, for the failure message."""
    from relaybus.agents.journal import JournalStore
    from relaybus.bus.feed import EventFeed
    from relaybus.bus.kv import Bucket

    kinds = []
    async with EventFeed(bus, run_id, replay=True) as feed:
        while (event := await feed.next(1.0)) is not None:
            error = f"{event.error.type}: {event.error.message[:200]}" if event.error else ""
            kinds.append(
                f"{event.kind}:{event.recipient}:{event.attempt}:{event.detail[:60]}{error}"
            )
    bucket = await Bucket.open(bus, bus.subjects.bucket("journal"))
    tasks = []
    for key in await bucket.keys():
        if key.startswith(run_id):
            _, task_id, agent = key.split(".")
            found = await JournalStore(bucket, agent).load(run_id, task_id)
            if found is not None:
                journal = found[0]
                ops = [msgspec.json.encode(op).decode() for op in journal.ops]
                tasks.append(f"{journal.agent} {journal.status} owner={journal.owner} ops={ops}")
    # the ledger's own record of every operation this run made (idempotency conflicts)
    from relaybus.bus.streams import read_subject

    entries = []
    for _, data in await read_subject(
        bus, bus.subjects.stream("LEDGER"), f"{bus.subjects.prefix}.ledger.entry.p0"
    ):
        text = data.decode(errors="replace")
        if run_id in text:
            entries.append(text[:300])
    return (
        f"run {run_id}: record={record and record.summary()} events={kinds} journal={tasks} "
        f"ledger={entries}"
    )


def effects(log: Path) -> Counter[str]:
    return Counter(log.read_text().splitlines()) if log.exists() else Counter()


async def assert_runs_held(
    bus: Bus,
    run_ids: list[str],
    records: dict[str, RunRecord],
    log: Path,
    *,
    user_budget: int,
    audited: bool,
) -> dict[str, Any]:
    """The suite's promises: every accepted run ended (completed, or failed with a recorded
    reason); each completed run's effects applied exactly once; no budget overspent; for every
    completed run the audit recorded an allow for each of its tool calls, and no denial."""
    missing = [r for r in run_ids if r not in records or records[r].status not in ENDED]
    if missing:
        detail = [await describe_run(bus, r, records.get(r)) for r in missing[:3]]
        raise AssertionError(f"{len(missing)} accepted runs never ended: {detail}")
    failed = {r: rec.error for r, rec in records.items() if rec.status != "completed"}
    for run_id, error in failed.items():
        assert error is not None and error.message, f"run {run_id} failed without a reason"
    completed = [r for r in run_ids if records[r].status == "completed"]
    seen = effects(log)
    twice = {line: n for line, n in seen.items() if n > 1}
    assert not twice, f"effects applied more than once: {twice}"
    for run_id in completed:
        assert seen[f"charge {run_id}"] == 1 and seen[f"effect {run_id}"] == 1, run_id
        assert records[run_id].cost == RUN_COST, (run_id, records[run_id].cost)
    ledger = LedgerClient(bus)
    levels = await ledger.query("levels")
    over = [lv for lv in levels if lv["limit"] and lv["spent"] + lv["held"] > lv["limit"]]
    assert not over, f"budgets overspent: {over}"
    user = [lv for lv in levels if lv["level"].startswith(f"user:{USER}")]
    spent = sum(lv["spent"] for lv in user)
    recorded = sum(rec.cost for rec in records.values())
    assert spent == recorded <= user_budget, (spent, recorded, failed)
    if audited:
        records_ = await read_audit(bus, USER)
        denied = [a for a in records_ if a.decision != "allow"]
        assert not denied, f"unexpected denials: {denied[:3]}"
        tools = Counter((a.run_id, a.action) for a in records_)
        for run_id in completed:
            for action in ("tool/fault/charge", "tool/fault/effect"):
                assert tools[(run_id, action)] >= 1, f"no audit of {action} in run {run_id}"
    return {"completed": len(completed), "failed": failed, "spent": spent}


@pytest.fixture
async def fleet(settings: Settings) -> AsyncIterator[Fleet]:
    fleet = Fleet(settings)
    try:
        yield fleet
    finally:
        fleet.stop()
