"""The ledger state machine: exact arithmetic and clear refusals that change nothing."""

from __future__ import annotations

import copy

import msgspec
import pytest

from relaybus.bus import PermissionDenied
from relaybus.services.ledger.errors import BudgetExceeded
from relaybus.services.ledger.model import (
    MAX_EXPIRED_PER_ENTRY,
    Entry,
    LedgerError,
    State,
    apply,
    decide,
)
from relaybus.services.ledger.ops import (
    Budget,
    Cap,
    Capture,
    Hold,
    Op,
    Refund,
    SetBudget,
    SetRateLimit,
    Void,
)


def run(state: State, op: Op, now: float = 1000.0) -> dict[str, object]:
    decided = decide(state, op, now)
    return apply(state, decided) if isinstance(decided, Entry) else decided


def hold(op_id: str, amount: int, levels: list[str] | None = None, **kw: object) -> Hold:
    return Hold(
        id=op_id,
        amount=amount,
        payer="user:alice",
        payee="tool:search",
        levels=levels or ["user:alice", "run:R1"],
        **kw,
    )  # type: ignore[arg-type]


@pytest.fixture
def state() -> State:
    s = State()
    run(
        s,
        SetBudget(id="b1", budget=Budget(level="user:alice", limit=1000, period="monthly")),
    )
    run(s, SetBudget(id="b2", budget=Budget(level="run:R1", limit=600, max_steps=5)))
    return s


def test_hold_capture_moves_money_double_entry(state: State) -> None:
    run(state, hold("h1", 300))
    run(state, Capture(id="c1", transfer="h1", amount=250, tokens=10))
    assert state.balances == {"user:alice": -250, "tool:search": 250}
    assert sum(state.balances.values()) == 0
    run_level = state.levels["run:R1"]
    assert (run_level.spent, run_level.held, run_level.tokens) == (250, 0, 10)


def test_a_hold_fails_as_a_whole_if_any_level_would_go_over(state: State) -> None:
    run(state, hold("h1", 500))
    before = copy.deepcopy(state.levels)
    with pytest.raises(
        BudgetExceeded, match=r"budget run:R1 would go over: 200 asked, 100 of 600 left"
    ):
        run(state, hold("h2", 200))
    assert state.levels == before and "h2" not in state.holds


def test_step_limit_of_a_run(state: State) -> None:
    for i in range(5):
        run(state, hold(f"h{i}", 1))
    with pytest.raises(BudgetExceeded, match="step limit 5"):
        run(state, hold("h5", 1))


def test_idempotent_ids(state: State) -> None:
    first = run(state, hold("h1", 100))
    assert run(state, hold("h1", 100)) == first
    assert state.levels["run:R1"].held == 100
    with pytest.raises(LedgerError, match="already used with a different body"):
        run(state, hold("h1", 101))


@pytest.mark.parametrize(
    ("amount", "match"),
    [(-5, "positive"), (0, "positive"), (2**60, "overflows"), (True, "integer")],
)
def test_bad_amounts_are_refused(state: State, amount: int, match: str) -> None:
    with pytest.raises(LedgerError, match=match):
        run(state, hold("bad", amount))
    assert "bad" not in state.holds


def test_capture_rules(state: State) -> None:
    run(state, hold("h1", 100))
    with pytest.raises(LedgerError, match="above the 100 held"):
        run(state, Capture(id="c1", transfer="h1", amount=101))
    with pytest.raises(LedgerError, match="in EUR, but h1 holds USD"):
        run(state, Capture(id="c2", transfer="h1", amount=10, currency="EUR"))
    run(state, Void(id="v1", transfer="h1"))
    with pytest.raises(LedgerError, match="is voided"):
        run(state, Capture(id="c3", transfer="h1", amount=10))
    with pytest.raises(LedgerError, match="no hold 'nope'"):
        run(state, Capture(id="c4", transfer="nope", amount=1))


def test_expired_hold_cannot_be_captured_and_frees_its_budget(state: State) -> None:
    run(state, hold("h1", 600, ttl_s=10), now=1000.0)
    with pytest.raises(LedgerError, match="is expired"):
        run(state, Capture(id="c1", transfer="h1", amount=1), now=1011.0)
    run(state, hold("h2", 600), now=1012.0)  # the expired hold no longer counts
    assert state.holds["h1"].state == "expired"


def test_a_flood_of_lapsed_holds_is_released_in_bounded_entries_and_frees_the_budget() -> None:
    # Given 2,000 one-second holds that used up a budget and all lapsed together
    state = State()
    run(state, SetBudget(id="b", budget=Budget(level="user:flood", limit=2_000)))
    for i in range(2_000):
        flood = Hold(
            id=f"f{i}",
            amount=1,
            payer="user:flood",
            payee="tool:x",
            levels=["user:flood"],
            ttl_s=1.0,
        )
        run(state, flood, now=1000.0)
    # When the next operation is decided after they lapsed
    decided = decide(state, hold("after", 2_000, levels=["user:flood"]), 1002.0)
    # Then its entry releases a bounded number (one journal message holds it), yet every lapsed
    # hold already counts as free, and none of them can be captured
    assert isinstance(decided, Entry)
    assert len(decided.expired) == MAX_EXPIRED_PER_ENTRY
    apply(state, decided)
    with pytest.raises(LedgerError, match="is expired"):
        run(state, Capture(id="late", transfer="f1999", amount=1), now=1002.0)
    # and the entries after it release the rest, until nothing lapsed is left held
    run(state, Void(id="v", transfer="after"), now=1003.0)
    for i in range(2_000 // MAX_EXPIRED_PER_ENTRY):  # bounded: each entry releases up to 256
        run(state, SetBudget(id=f"s{i}", budget=Budget(level="user:other", limit=1)), now=1003.0)
    assert state.levels["user:flood"].held == 0
    assert all(state.holds[f"f{i}"].state == "expired" for i in range(2_000))


def test_clock_never_goes_backwards(state: State) -> None:
    run(state, hold("h1", 1, ttl_s=10), now=2000.0)
    run(state, hold("h2", 1, ttl_s=10), now=1999.0)  # the host's clock stepped back: not a refusal
    assert state.clock == 2000.0 and state.holds["h2"].expires == 2010.0  # decided at the ledger's


def test_parallel_holds_reserve_tokens_and_captures_settle_the_actual_use(state: State) -> None:
    run(state, SetBudget(id="bt", budget=Budget(level="run:T", max_tokens=1000)))
    run(state, hold("a", 1, levels=["run:T"], tokens=400))
    run(state, hold("b", 1, levels=["run:T"], tokens=400))
    with pytest.raises(BudgetExceeded, match=r"400 tokens asked, 200 of 1000 left \(800 reserved"):
        run(state, hold("c", 1, levels=["run:T"], tokens=400))
    run(state, Capture(id="ca", transfer="a", amount=1, tokens=150))
    level = state.levels["run:T"]
    assert (level.tokens, level.tokens_held) == (150, 400)
    run(state, hold("c2", 1, levels=["run:T"], tokens=450))  # 150 + 400 + 450 = 1000
    run(state, Void(id="vb", transfer="b"))
    assert state.levels["run:T"].tokens_held == 450


def test_a_cap_only_narrows_a_payment_level(state: State) -> None:
    assert run(state, Cap(id="c1", level="payrun:R:a", amount=6000))["narrowed"]
    assert not run(state, Cap(id="c2", level="payrun:R:a", amount=30000))["narrowed"]
    assert state.budgets["payrun:R:a"].limit == 6000
    run(state, Cap(id="c3", level="payrun:R:a", amount=5000))
    assert state.budgets["payrun:R:a"].limit == 5000
    with pytest.raises(PermissionDenied, match="other budgets are set by an operator"):
        run(state, Cap(id="c4", level="run:R1", amount=1))


def test_currency_mismatch_on_an_account(state: State) -> None:
    run(state, hold("h1", 1))
    with pytest.raises(LedgerError, match="account user:alice is in USD, not EUR"):
        run(state, hold("h2", 1, currency="EUR"))


def test_refunds_partial_repeated_never_above_captured(state: State) -> None:
    run(state, hold("h1", 100))
    run(state, Capture(id="c1", transfer="h1", amount=80))
    run(state, Refund(id="r1", transfer="h1", amount=30))
    run(state, Refund(id="r2", transfer="h1", amount=50))
    with pytest.raises(LedgerError, match="above the 0 left to refund"):
        run(state, Refund(id="r3", transfer="h1", amount=1))
    with pytest.raises(LedgerError, match="no captured transfer 'zzz'"):
        run(state, Refund(id="r4", transfer="zzz", amount=1))
    assert state.balances == {"user:alice": 0, "tool:search": 0}
    assert state.levels["run:R1"].spent == 0


def test_monthly_budget_resets_at_the_period_boundary(state: State) -> None:
    nov = 1_795_000_000.0  # 2026-11
    dec = 1_798_000_000.0  # 2026-12
    run(state, hold("h1", 1000, levels=["user:alice"]), now=nov)
    with pytest.raises(BudgetExceeded):
        run(state, hold("h2", 1, levels=["user:alice"]), now=nov + 1)
    run(state, hold("h3", 1000, levels=["user:alice"]), now=dec)
    assert {"user:alice@2026-11", "user:alice@2026-12"} <= set(state.levels)


def test_rate_limits_per_agent_and_resource_are_decided_from_the_journal(state: State) -> None:
    from relaybus.services.ledger.errors import RateLimited
    from relaybus.services.ledger.ops import RateLimit

    key = "agent:research/tool:search"
    run(state, SetRateLimit(id="l1", limit=RateLimit(key=key, rpm=2, tpm=100)))
    run(state, hold("h1", 1, rate=key), now=1000.0)
    run(state, Capture(id="c1", transfer="h1", amount=1, tokens=100), now=1001.0)
    with pytest.raises(RateLimited, match="100 tokens per minute") as tokens:
        run(state, hold("h2", 1, rate=key), now=1002.0)
    assert tokens.value.retry_after_s == pytest.approx(59.0)
    run(state, hold("h3", 1, rate="agent:other/tool:search"), now=1003.0)  # other keys unaffected
    run(state, hold("h4", 1, rate=key), now=1062.0)  # the minute has passed
    run(state, hold("h5", 1, rate=key), now=1063.0)
    with pytest.raises(RateLimited, match="2 requests per minute"):
        run(state, hold("h6", 1, rate=key), now=1064.0)
    replayed = State()
    for entry in state.history:
        apply(replayed, entry)
    with pytest.raises(RateLimited):  # the windows rebuild from the journal
        decide(replayed, hold("h6", 1, rate=key), 1064.0)


def test_a_retried_op_decoded_from_json_is_the_same_op() -> None:
    """A capture rebuilt from a journal (its strings fresh objects, tags in another order) is
    the same operation as the one built in code: the retry gets the first result."""
    import msgspec

    from relaybus.services.ledger.model import digest

    built = Capture(
        id="c1",
        transfer="h1",
        amount=3,
        currency="USD",
        tags={"run": "r", "tool": "t"},
    )
    wire = msgspec.json.encode(
        {
            "kind": "capture",
            "id": "c1",
            "transfer": "h1",
            "amount": 3,
            "currency": "USD",
            "tags": {"tool": "t", "run": "r"},
        }
    )
    decoded = msgspec.json.decode(wire, type=Op)
    assert digest(decoded) == digest(built)
    assert digest(msgspec.structs.replace(built, amount=4)) != digest(built)


def test_digests_of_operations_journaled_before_stay_the_same() -> None:
    # digests an earlier version stored in journal entries (dfce08e, before partitions added
    # fields to Hold and Void): a retry of such an operation must still match its first result
    from relaybus.services.ledger.model import digest
    from relaybus.services.ledger.ops import Budget as BudgetSpec
    from relaybus.services.ledger.ops import Capture, Hold, SetBudget, Void

    hold = Hold(
        id="h1",
        payer="user:a",
        payee="tool:x",
        amount=300,
        levels=["user:a", "run:R"],
        tags={"run": "R", "agent": "a"},
        rate="agent:a/tool:x",
        tokens=5,
    )
    assert digest(hold) == "105c20d63ee1832796659fdab105e1e5d9805f9aa13eecdcfd6b1d8db33bb00d"
    capture = Capture(id="c1", transfer="h1", amount=250, tokens=3, tags={"run": "R"})
    assert digest(capture) == "a0ef09a134fb7b03343883cf4d5d3d2664a854095564e8189e53cc06cea0323d"
    budget = SetBudget(id="b1", budget=BudgetSpec(level="user:a", limit=5000, period="monthly"))
    assert digest(budget) == "051fd516e167bea40c4ce34bfa923b6345132ee1af4db2ecdf2bcf46b7e3825d"
    assert digest(Void(id="v1", transfer="h1")) == (
        "b089366b6491a34dc0eb66da488bed4aee9b4041caeb768c812e663274369ab5"
    )
    # and an operation decoded from the journal digests as the one built in code
    for op in (hold, capture, budget):
        assert digest(msgspec.msgpack.decode(msgspec.msgpack.encode(op), type=type(op))) == digest(
            op
        )


def test_holds_expire_on_time_among_many_and_after_a_restore_from_a_snapshot() -> None:
    from relaybus.services.ledger.model import State, apply, decide
    from relaybus.services.ledger.ops import Capture, Hold

    state = State()
    for i in range(200):  # many open holds, expiring at different times
        apply(
            state,
            decide(state, Hold(id=f"h{i}", payer="u", payee="t", amount=1, ttl_s=10 + i), 0.0),
        )
    apply(state, decide(state, Capture(id="c5", transfer="h5", amount=1), 1.0))  # settled
    restored = msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=State)
    for s in (state, restored):
        # at t=50 the holds with ttl ≤ 50 lapsed, except the captured one
        entry = decide(s, Hold(id="probe", payer="u", payee="t", amount=1), 50.0)
        assert sorted(entry.expired) == sorted(f"h{i}" for i in range(41) if i != 5)  # type: ignore[union-attr]
        assert decide(s, Hold(id="early", payer="u", payee="t", amount=1), 5.0).expired == []  # type: ignore[union-attr]


def test_setting_one_budget_field_keeps_the_others_in_force(state: State) -> None:
    # an operator adds a step limit to alice's monthly 1000: her cost limit still holds
    result = run(
        state,
        SetBudget(id="b3", budget=Budget(level="user:alice", max_steps=7), only=["max_steps"]),
    )
    assert (result["limit"], result["period"], result["max_steps"]) == (1000, "monthly", 7)
    with pytest.raises(BudgetExceeded):
        run(state, hold("h-over", 1001, levels=["user:alice"]))
    # without `only` the whole budget is replaced, as before
    run(state, SetBudget(id="b4", budget=Budget(level="user:alice", max_steps=7)))
    assert run(state, hold("h-free", 1001, levels=["user:alice"]))["hold"] == "h-free"
    # on a level with no budget yet, only the fields named are set (the rest: no limit)
    fresh = Budget(level="user:new", limit=100, period="daily", max_steps=5)
    set_fresh = run(state, SetBudget(id="b6", budget=fresh, only=["max_steps"]))
    assert (set_fresh["limit"], set_fresh["period"], set_fresh["max_steps"]) == (0, "", 5)
    with pytest.raises(LedgerError, match="not \\['colour'\\]"):
        run(state, SetBudget(id="b5", budget=Budget(level="user:alice"), only=["colour"]))
