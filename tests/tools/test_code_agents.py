"""`run_code` as agents use it: journaled (a replay never runs the code again), gated by the
chain's `code/run` constraints, audited, and charged by the CPU seconds it used. Real
nats-server, identity and ledger services, agent processes and bubblewrap."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relaybus.agents.submit import submit
from relaybus.bus import Bus, Settings, default_topology, ensure
from relaybus.services.identity.client import IdentityClient, read_audit, write_agent_key
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.ops import Budget
from relaybus.testing import AgentEnvironment

from .. import code_agents
from ..conftest import Spawn, child_env, service_process, wait_service

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("TEST_NEEDS_BWRAP"),
    reason="needs bubblewrap (apt-get install bubblewrap); CI sets TEST_NEEDS_BWRAP",
)

PER_CPU_SECOND = 2_000  # run_code's default price, micro-units per CPU second
BURN = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end:\n    pass\nprint('done')\n"


async def test_a_replayed_call_returns_the_recorded_result_and_never_runs_the_code_again() -> None:
    code_agents.SEEN.clear()
    async with AgentEnvironment([code_agents.FlakyCoder]) as env:
        run = await env.client.submit("flaky_coder", {})
        report = await run.result(timeout_s=60)
        ops = await env.journal_ops(run.run_id, "flaky_coder")
    # the second attempt got the first attempt's random bytes: the code ran once
    assert len(code_agents.SEEN) == 2 and code_agents.SEEN[0] == code_agents.SEEN[1]
    assert report["stdout"] == code_agents.SEEN[0] and len(report["stdout"]) == 33
    assert [(op.kind, op.name) for op in ops] == [("tool", "run_code")]


@dataclass
class Stack:
    bus: Bus
    settings: Settings
    token: str
    ledger: LedgerClient

    async def run(self, task: dict[str, Any]) -> Any:
        return await submit(
            self.bus,
            "coder",
            json.dumps(task).encode(),
            sender="user:cora",
            token=self.token,
            wait=True,
            timeout_s=60,
        )


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path, spawn: Spawn) -> AsyncIterator[Stack]:
    base = settings.with_values(identity=True, ledger=True)
    with service_process(base, "identity"), service_process(base, "ledger"):
        async with Bus(base, name="test") as bus:
            await ensure(bus, default_topology(bus.subjects))
            await wait_service(bus, "identity")
            await wait_service(bus, "ledger")
            identity = IdentityClient(bus)
            key = write_agent_key(settings.home.resolve(), "coder").verify_key
            await identity.add_agent("coder", key, ["code/run"], [])
            await identity.add_user("cora", ["code/run:max_cpu_seconds=3,max_memory_mb=512"], [])
            token = (await identity.issue_token("cora"))["token"]
            ledger = LedgerClient(bus)
            await ledger.set_budget("b1", Budget(level="user:cora", limit=50_000))
            spawn("code_agents:Coder", **child_env(base))
            yield Stack(bus, base, token, ledger)


async def test_code_runs_gated_audited_and_charged_by_the_cpu_it_used(stack: Stack) -> None:
    done = await stack.run({"code": BURN, "cpu_seconds": 2})
    assert done.status == "completed", done.error
    report = done.result
    assert report["stdout"] == "done\n" and report["exit_code"] == 0
    assert 0.3 < report["cpu_seconds"] < 2
    # charged what it used, not what it held ((2 + 1) CPU seconds)
    spent = (await stack.ledger.run_cost(done.run_id))["spent"]
    assert spent == math.ceil(PER_CPU_SECOND * report["cpu_seconds"]) < 3 * PER_CPU_SECOND
    audit = await read_audit(stack.bus, "cora", run_id=done.run_id)
    assert [(a.action, a.decision) for a in audit] == [
        ("run/root", "allow"),
        ("tool/code/run", "allow"),
        ("code/ran", "allow"),
    ]
    assert audit[2].detail == {"exit_code": 0, "killed": "", "cpu_s": report["cpu_seconds"]}


async def test_more_cpu_than_the_scope_allows_is_refused_audited_and_not_charged(
    stack: Stack,
) -> None:
    before = await stack.ledger.query("levels", user="cora")
    done = await stack.run({"code": "print('ran')", "cpu_seconds": 10})
    assert done.status == "failed" and "PermissionDenied" in done.error
    assert "cpu_seconds=10.0 is over the limit 3" in done.error
    (denied,) = await read_audit(stack.bus, "cora", run_id=done.run_id, decision="deny")
    assert denied.action == "tool/code/run" and denied.tool == "run_code"
    assert (await stack.ledger.run_cost(done.run_id))["spent"] == 0
    assert (await stack.ledger.query("levels", user="cora")) == before


async def test_a_call_the_budget_cannot_hold_does_not_run(stack: Stack) -> None:
    # 3 CPU seconds hold (3 + 1) x 2000 = 8000; leave 7000 in the user's budget
    await stack.ledger.set_budget("b2", Budget(level="user:cora", limit=7_000))
    done = await stack.run({"code": "print('ran')", "cpu_seconds": 3})
    assert done.status == "failed" and "BudgetExceeded" in done.error, done.error
    audit = await read_audit(stack.bus, "cora", run_id=done.run_id)
    assert "code/ran" not in [a.action for a in audit]
    assert (await stack.ledger.run_cost(done.run_id))["spent"] == 0
