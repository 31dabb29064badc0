"""The ledger's trust boundary, attacked through a real `relaybus service ledger` process: a
client that sets the ledger's clock, parallel LLM calls against a run's token budget, a sibling
branch lifting a payment cap, split payments dodging approval, and an agent reaching for
operator operations. Each test asserts the refusal, its audit record where one is due, and
that nothing changed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from relaybus.agents.charging import Costs
from relaybus.agents.control import send_signal
from relaybus.bus import Bus, PermissionDenied, Settings, new_id, rpc
from relaybus.bus.rpc import Reply
from relaybus.services.identity.client import read_audit
from relaybus.services.ledger.client import AGENT_OPS, OPERATOR_OPS, OPERATOR_QUERIES, LedgerClient
from relaybus.services.ledger.errors import BudgetExceeded, LedgerError
from relaybus.services.ledger.ops import Budget
from relaybus.services.ledger.prices import ModelPrice, PriceTable

from ..conftest import Spawn, child_env, service_process, wait_service
from ..payments.stack import UNIT, Stack, payment_stack, signal_of, wait_terminal, wait_waiting
from .conftest import SecureStack


@pytest.fixture
def ledger_proc(settings: Settings) -> Iterator[None]:
    with service_process(settings, "ledger"):
        yield


@pytest.fixture
async def ledger(bus: Bus, ledger_proc: None) -> LedgerClient:
    await wait_service(bus, "ledger")
    return LedgerClient(bus)


def subject(bus: Bus, op: str) -> str:
    return f"{bus.subjects.prefix}.svc.ledger.{op}"


async def snapshot(ledger: LedgerClient) -> tuple[Any, Any, Any]:
    return (
        await ledger.query("levels"),
        await ledger.query("balance"),
        await ledger.query("holds"),
    )


async def ledger_denials(bus: Bus) -> list[Any]:
    return await read_audit(bus, "ledger", decision="deny")


# -- 1. no client sets the ledger's clock ---------------------------------------------------------


async def test_a_request_carrying_a_time_is_refused_and_holds_keep_working(
    bus: Bus, ledger: LedgerClient
) -> None:
    # Given a ledger with an open hold
    await ledger.hold("h0", "user:mona", "tool:x", 5, ["user:mona"])
    before = await snapshot(ledger)
    clock = (await ledger.query("ping"))["clock"]
    # When a client sends, minute after minute, ticks and holds 55 s ahead of the clock
    ahead = time.time() + 55
    for attempt in range(3):
        with pytest.raises(LedgerError, match=r"may not carry a time \(`at`\).*remove the field"):
            await rpc.call(
                bus, subject(bus, "tick"), {"kind": "tick", "id": f"t{attempt}", "at": ahead}
            )
        with pytest.raises(LedgerError, match="may not carry a time"):
            await rpc.call(
                bus,
                subject(bus, "hold"),
                {
                    "kind": "hold",
                    "id": f"x{attempt}",
                    "at": ahead,
                    "amount": 1,
                    "payer": "user:mona",
                    "payee": "tool:x",
                },
            )
    # Then nothing changed, the clock did not move ahead, and later holds are decided
    assert await snapshot(ledger) == before
    assert clock <= (await ledger.query("ping"))["clock"] <= time.time() + 1
    held = await ledger.hold("h1", "user:mona", "tool:x", 5, ["user:mona"])
    assert held["expires"] <= time.time() + 301  # by the service's own clock
    denials = await ledger_denials(bus)
    assert {d.action for d in denials} == {"ledger/tick", "ledger/hold"} and len(denials) == 6
    assert all("may not carry a time" in d.reason for d in denials)


# -- 2. token budgets hold under parallel LLM calls -----------------------------------------------


@dataclass
class StubContext:
    """What `Costs.charge_llm` reads of a handler's context."""

    run_id: str
    task_id: str = field(default_factory=new_id)
    principal: str = "user:tess"
    voids: dict[int, int] = field(default_factory=dict)

    def charge_key(self, seq: int) -> str:
        voided = self.voids.get(seq, 0)
        return str(seq) if not voided else f"{seq}.{voided}"

    async def note_void(self, seq: int) -> None:
        self.voids[seq] = self.voids.get(seq, 0) + 1


async def test_parallel_llm_calls_cannot_pass_a_runs_token_budget(
    bus: Bus, ledger: LedgerClient
) -> None:
    # Given a run with max_tokens=1000, and LLM calls of max_tokens=300 (prompt estimate 84)
    run = new_id()
    await ledger.set_budget("bt", Budget(level=f"run:{run}", max_tokens=1000))
    costs = Costs(bus, "writer", ledger, PriceTable(models={"m": ModelPrice(input=1, output=2)}))
    ctx = cast(Any, StubContext(run_id=run))

    async def call(seq: int) -> int:
        async with costs.charge_llm(ctx, "m", 84, 300, seq) as bill:
            await asyncio.sleep(0.5)  # the model answering: all three are in flight at once
            bill.input_tokens, bill.output_tokens = 80, 250
        assert bill.pending is not None
        await costs.capture(bill.pending)
        return bill.pending.tokens

    # When three calls run in parallel (each reserves 84 + 300 = 384 tokens)
    outcomes = await asyncio.gather(*(call(seq) for seq in range(3)), return_exceptions=True)
    # Then two ran, the third was refused before it ran, and the run used at most its budget
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], BudgetExceeded)
    assert "would go over its token limit: 384 tokens asked, 232 of 1000 left" in str(refused[0])
    (level,) = await ledger.query("levels", level=f"run:{run}")
    assert (level["tokens"], level["tokens_held"], level["steps"]) == (660, 0, 2)
    assert (await ledger.run_cost(run))["tokens"] == 660
    # and a call that no longer fits is refused, changing nothing
    with pytest.raises(BudgetExceeded, match="token limit"):
        await call(9)
    assert await ledger.query("levels", level=f"run:{run}") == [level]


# -- 3. payment caps hold per branch; approval is on the run's cumulative payments ---------------


async def test_a_sibling_cap_never_lifts_a_narrower_one_in_the_ledger(
    bus: Bus, ledger: LedgerClient
) -> None:
    run = new_id()
    branch = f"payrun:{run}:aaaa"
    assert (await ledger.cap("c1", branch, 6000 * UNIT))["limit"] == 6000 * UNIT
    await ledger.hold("p1", "user:paula", "payee:acme-air", 4000 * UNIT, [f"payrun:{run}", branch])
    # a sibling (or anyone) asks for 30000 on the branch: a cap only narrows
    raised = await ledger.cap("c2", branch, 30000 * UNIT)
    assert raised == {
        "id": "c2",
        "kind": "cap",
        "level": branch,
        "limit": 6000 * UNIT,
        "narrowed": False,
    }
    before = await snapshot(ledger)
    with pytest.raises(BudgetExceeded, match=rf"budget {branch} would go over"):
        await ledger.hold(
            "p2", "user:paula", "payee:acme-air", 4000 * UNIT, [f"payrun:{run}", branch]
        )
    assert await snapshot(ledger) == before
    # and `cap` cannot set any other budget
    with pytest.raises(PermissionDenied, match="other budgets are set by an operator"):
        await ledger.cap("c3", f"run:{run}", 1)
    assert await snapshot(ledger) == before
    assert [d.action for d in await ledger_denials(bus)] == ["ledger/cap"]


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    async with payment_stack(settings, tmp_path) as opened:
        yield opened


async def test_a_branch_cap_holds_after_a_sibling_branch_set_a_wider_one(
    stack: Stack, spawn: Spawn
) -> None:
    env = child_env(stack.settings)
    for agent in ("Treasurer", "BuyerA", "BuyerB"):
        spawn(f"payment_agents:{agent}", **env)
    charge = {"currency": "USD", "payee": "acme-air"}
    # Given branch A delegated a per-run cap of 6000 and sibling B one of 30000
    done = await stack.run(
        "treasurer",
        {
            "steps": [
                {"agent": "buyer_a", "cap": 6000, "charges": [{"amount": 4000, **charge}]},
                {"agent": "buyer_b", "cap": 30000, "charges": [{"amount": 5000, **charge}]},
                {"agent": "buyer_a", "cap": 6000, "charges": [{"amount": 4000, **charge}]},
            ]
        },
    )
    # Then A's second payment (8000 on its branch) is refused after B paid under its wider cap
    assert done.status == "completed", done.error
    first, sibling, refused = done.result
    assert first["receipts"][0]["status"] == "captured"
    assert sibling["receipts"][0]["status"] == "captured"
    assert "PaymentRefused" in refused["failed"] and "payment limit of 6000" in refused["failed"]
    assert sorted(i["amount"] for i in stack.intents(done.run_id)) == [4000, 5000]
    assert (await stack.statement())["totals"]["payments"] == 9000 * UNIT
    denials = await read_audit(stack.bus, "paula", run_id=done.run_id, decision="deny")
    assert [(d.action, d.actor) for d in denials] == [("payments/charge", "agent:buyer_a")]


async def test_splitting_a_payment_under_the_threshold_still_needs_approval(
    stack: Stack, spawn: Spawn
) -> None:
    spawn("payment_agents:Buyer", **child_env(stack.settings))
    # Given an approval threshold of 10000 and no per-run cap, two charges of 6000 each
    charge = {"amount": 6000, "currency": "USD", "payee": "acme-air"}
    run_id = await stack.start("buyer", {"charges": [charge, dict(charge)]})
    # Then the first is captured without a human, the second (12000 in the run) waits
    (waiting,) = await wait_waiting(stack.bus, run_id)
    intents = stack.intents(run_id)  # in the order they were authorized
    assert [i["status"] for i in intents] == ["succeeded", "requires_capture"]
    assert waiting == signal_of(intents[1]["metadata"]["relaybus_payment"])
    # and a rejection voids it: only the first payment was made
    await send_signal(stack.bus, run_id, waiting, "no")
    outcome = await wait_terminal(stack.bus, run_id)
    assert outcome.kind == "failed" and outcome.error is not None
    assert outcome.error.type == "PaymentRefused" and "was rejected" in outcome.error.message
    assert [i["status"] for i in stack.intents(run_id) if i["amount_received"]] == ["succeeded"]
    assert (await stack.statement())["totals"]["payments"] == 6000 * UNIT


# -- 4. operator-only operations --------------------------------------------------------------------


def test_agent_ops_name_exactly_what_an_agent_sends() -> None:
    from relaybus.bus import Subjects
    from relaybus.services.identity.messages import AgentRecord
    from relaybus.services.identity.natsconfig import agent_permissions
    from relaybus.services.ledger.messages import WRITES
    from relaybus.services.ledger.queries import QUERIES

    assert AGENT_OPS == ("hold", "capture", "void", "cap", "run_cost", "batch")
    operator = {*OPERATOR_OPS, *OPERATOR_QUERIES}
    assert not operator & set(AGENT_OPS)
    assert {"budget", "limit", "refund", "transfer", "tick", "statement", "levels"} <= operator
    # every subject the service answers
    assert {*WRITES, *QUERIES, "batch"} == {*AGENT_OPS, *operator}
    subjects = Subjects("relay")
    record = AgentRecord(name="a", public_key="00")
    allowed = agent_permissions(subjects, record, [record])["publish"]
    ledger = {s for s in cast(dict[str, list[str]], allowed)["allow"] if ".svc.ledger." in s}
    assert ledger == {f"relay.svc.ledger.{op}" for op in AGENT_OPS}
    # a ledger of 3 partitions: the same operations on each partition, and nothing else
    allowed = agent_permissions(subjects, record, [record], ledger_partitions=3)["publish"]
    ledger = {s for s in cast(dict[str, list[str]], allowed)["allow"] if ".svc.ledger." in s}
    assert ledger == {f"relay.svc.ledger.{op}" for op in AGENT_OPS} | {
        f"relay.svc.ledger.{op}.p{i}" for op in AGENT_OPS for i in range(3)
    }


async def test_a_batch_is_checked_item_by_item_and_carries_no_operator_operation(
    bus: Bus, ledger: LedgerClient
) -> None:
    # Given a budget of 10 for user:wes, and a batch an attacker crafts by hand
    await ledger.set_budget("b-wes", Budget(level="user:wes", limit=10))
    subject = f"{bus.subjects.prefix}.svc.ledger.batch"
    hold = {"kind": "hold", "payer": "user:wes", "payee": "tool:x", "levels": ["user:wes"]}
    batch = [
        {**hold, "id": "w1", "amount": 6},
        {**hold, "id": "w2", "amount": 6},  # over the budget once w1 holds 6
        {"kind": "budget", "id": "w3", "budget": {"level": "user:wes", "limit": 10**9}},
        {**hold, "id": "w4", "amount": 1, "at": 0},  # a time on the wire
        {**hold, "id": "w5", "amount": 1, "budget": {"level": "user:wes", "limit": 10**9}},
        {"kind": "refund", "id": "w6", "transfer": "w1", "amount": 6},
        "not an operation",
    ]
    replies = await rpc.call_as(bus, subject, batch, list[Reply])
    # Then each item got its own answer: only the first hold was placed
    assert [r.ok for r in replies] == [True, False, False, False, False, False, False]
    errors = [r.error.type if r.error else "" for r in replies]
    assert errors[1:] == [
        "BudgetExceeded",
        "PermissionDenied",
        "LedgerError",
        "PermissionDenied",
        "PermissionDenied",
        "LedgerError",
    ]
    limits = {lv["level"]: lv["limit"] for lv in await ledger.query("levels")}
    assert limits["user:wes"] == 10  # the smuggled budgets changed nothing
    holds = await ledger.query("holds")
    assert [h["id"] for h in holds if h["payer"] == "user:wes"] == ["w1"]
    # and the refused items are audited at the trust boundary
    refused = [a for a in await ledger_denials(bus) if a.action == "ledger/batch"]
    assert any("cannot be batched" in a.reason for a in refused), refused
    # and a body that is no batch is refused whole, saying what a batch is
    with pytest.raises(LedgerError, match="a JSON array of operations"):
        await rpc.call(bus, subject, {"kind": "hold"})
    with pytest.raises(LedgerError, match="at most 1024 operations"):
        await rpc.call(bus, subject, [{**hold, "id": f"x{i}", "amount": 1} for i in range(1025)])


async def test_a_batch_padded_with_junk_cannot_flood_the_audit_or_hide_a_denial(
    bus: Bus, ledger: LedgerClient
) -> None:
    # Given a hand-made batch: 500 malformed items, then one hold smuggling an operator field
    subject = f"{bus.subjects.prefix}.svc.ledger.batch"
    smuggled = {
        "kind": "hold",
        "id": "pad-denied",
        "payer": "user:pad",
        "payee": "tool:x",
        "levels": ["user:pad"],
        "amount": 1,
        "budget": {"level": "user:pad", "limit": 10**9},
    }
    before = len(await ledger_denials(bus))
    replies = await rpc.call_as(bus, subject, [{}] * 500 + [smuggled], list[Reply])
    # Then every item is refused in the reply
    assert not any(r.ok for r in replies) and len(replies) == 501
    # and the audit holds a few records, not 501, with the denial named on its own
    records = (await ledger_denials(bus))[before:]
    assert len(records) <= 10, len(records)
    assert any(r.reason.startswith("PermissionDenied") for r in records), records
    assert any("493 more operations" in r.reason for r in records), records


async def test_operator_operations_never_ride_on_an_agent_subject(
    bus: Bus, ledger: LedgerClient
) -> None:
    await ledger.set_budget("b0", Budget(level="user:vic", limit=100))
    before = await snapshot(ledger)
    budget = {"level": "user:vic", "limit": 10**9}
    attempts: list[tuple[str, dict[str, Any], str]] = [
        ("hold", {"kind": "budget", "id": "a1", "budget": budget}, "is an operator operation"),
        (
            "capture",
            {"kind": "refund", "id": "a2", "transfer": "x", "amount": 1},
            "is an operator operation",
        ),
        (
            "hold",
            {
                "kind": "hold",
                "id": "a3",
                "amount": 1,
                "payer": "user:vic",
                "payee": "tool:x",
                "levels": ["user:vic"],
                "budget": budget,
            },
            "may not carry `budget`: only an operator sets it",
        ),
        (
            "void",
            {
                "kind": "void",
                "id": "a4",
                "transfer": "x",
                "limit": {"key": "agent:a/tool:x", "rpm": 10**6},
            },
            "may not carry `limit`",
        ),
        (
            "cap",
            {"kind": "cap", "id": "a5", "level": "user:vic", "amount": 10**9},
            "other budgets are set by an operator",
        ),
    ]
    for op, body, reason in attempts:
        with pytest.raises(PermissionDenied, match=reason):
            await rpc.call(bus, subject(bus, op), body)
    assert await snapshot(ledger) == before
    with pytest.raises(BudgetExceeded, match="budget user:vic would go over"):
        await ledger.hold("h", "user:vic", "tool:x", 101, ["user:vic"])
    denials = await ledger_denials(bus)
    assert [d.action for d in denials] == [f"ledger/{op}" for op, _, _ in attempts]
    assert all(d.reason.startswith("PermissionDenied") for d in denials)


async def test_a_hostile_agent_reaches_only_the_agent_ledger_subjects(secure: SecureStack) -> None:
    from relaybus.bus import PermissionViolation

    p = secure.settings.prefix
    async with Bus(secure.settings, name="operator") as op:
        await wait_service(op, "ledger")
        before = await snapshot(LedgerClient(op))
    async with secure.hostile() as bus:
        for name in (*OPERATOR_OPS, *OPERATOR_QUERIES):
            with pytest.raises(PermissionViolation):
                await bus.publish_core(f"{p}.svc.ledger.{name}", b"{}", confirm_s=2.0)
        # what an agent needs still answers (here: a query of its run's cost)
        assert (await LedgerClient(bus).run_cost("RUNX"))["spent"] == 0
    async with Bus(secure.settings, name="operator") as op:
        assert await snapshot(LedgerClient(op)) == before
