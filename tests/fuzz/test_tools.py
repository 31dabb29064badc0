"""Fuzzing tool arguments: hostile arguments to a `@tool` are refused with ToolArgumentsInvalid
naming the field, and the tool's body never runs — checked on `Tool.validate`, through a real
agent process calling `ctx.tool`, and on the identity gate's argument constraints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relaybus.agents import ToolArgumentsInvalid
from relaybus.agents.submit import submit
from relaybus.bus import Bus
from relaybus.services.identity.scopes import Scope, check

from ..conftest import Spawn
from .hostile import PURE, json_values, msgpack_values
from .targets import CALLS, FIELDS, VALID, spy

hostile_values = st.one_of(
    msgpack_values,
    st.sampled_from(
        [
            None,
            "",
            " ana@team.example",
            "a@b@c",
            "x" * 10_000,
            10**100,
            -(10**30),
            float("nan"),
            float("inf"),
            True,
            [],
            {},
            {"city": ""},
            {"city": "x", "zip": -1},
            {"city": "x", "zip": 1, "extra": 1},
            ["a"] * 6,
        ]
    ),
)


def refusal(args: Any) -> str | None:
    """Why `spy` refuses `args` (None if it accepts them); nothing but a refusal may escape."""
    before = len(CALLS)
    try:
        spy.validate(args)
    except ToolArgumentsInvalid as exc:
        message = str(exc)
        assert message.startswith("tool spy: ") and "\n" not in message, message
        return message
    finally:
        assert len(CALLS) == before, "validation must never run the tool body"
    return None


@PURE
@given(st.sampled_from(FIELDS), hostile_values)
@example("amount", float("nan"))
@example("ratio", float("nan"))
@example("ratio", float("inf"))
@example("amount", True)
@example("to", "a@b@c")
@example("address", {"city": "x", "zip": 100_000})
@example("tags", ["a"] * 6)
def test_a_hostile_value_is_refused_naming_its_field(field: str, value: Any) -> None:
    problem = refusal({**VALID, field: value})
    if problem is not None:
        assert f"{field}:" in problem or f"{field}." in problem, problem
        other = [f for f in FIELDS if f != field and (f"{f}:" in problem or f"{f}." in problem)]
        assert not other, f"only {field} was wrong, but the refusal names {other}: {problem}"


@PURE
@given(st.dictionaries(st.text(max_size=12), hostile_values, max_size=4))
@example({"\n": None})  # regression: a newline in an argument name split the refusal in two
@example({"": 1})
@example({"amount; to": 1})
def test_unknown_argument_names_are_refused_by_name(extra: dict[str, Any]) -> None:
    unknown = {k: v for k, v in extra.items() if k not in FIELDS}
    problem = refusal({**VALID, **unknown})
    if unknown:
        assert problem is not None
        for key in unknown:  # a name that is no identifier is quoted: it cannot split the line
            shown = key if key.isidentifier() else repr(key)
            assert f"{shown}: Extra inputs are not permitted" in problem, problem
    else:
        assert problem is None


@PURE
@given(hostile_values.filter(lambda v: not isinstance(v, dict)))
def test_arguments_that_are_not_an_object_are_refused(args: Any) -> None:
    problem = refusal(args)
    assert problem is not None and "(arguments)" in problem


@PURE
@given(st.sets(st.sampled_from(["to", "amount"]), min_size=1))
def test_a_missing_required_argument_is_named(missing: set[str]) -> None:
    problem = refusal({k: v for k, v in VALID.items() if k not in missing})
    assert problem is not None
    assert all(f"{name}: Field required" in problem for name in missing), problem


@PURE
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(),
        st.booleans(),
        st.text(max_size=5),
        st.none(),
    )
)
@example(float("nan"))  # regression: NaN passed `max_amount=100` (every comparison is False)
@example(100)
@example(100.0000001)
@example(True)
def test_a_numeric_scope_limit_admits_only_numbers_within_it(amount: Any) -> None:
    scopes = [Scope(path="shop/order", constraints={"max_amount": 100})]
    problem = check(scopes, "shop/order", {"amount": amount}, "alice")
    within = (
        isinstance(amount, int | float) and not isinstance(amount, bool) and amount <= 100
    )  # NaN is not <= 100
    assert (problem == "") == within, (amount, problem)


# -- through a real agent process: ctx.tool refuses before the body runs --------------------------

json_hostile = st.one_of(
    json_values,
    st.sampled_from([None, "", "a@b@c", 10**30, 1.5, -1, True, [], {"city": 1}, ["a"] * 6]),
)
tool_args = st.one_of(
    st.tuples(st.sampled_from(FIELDS), json_hostile).map(lambda fv: {**VALID, fv[0]: fv[1]}),
    st.dictionaries(st.sampled_from([*FIELDS, "nope", ""]), json_hostile, max_size=4),
    json_values,  # often not an object at all
)


@pytest.fixture
def tool_log(spawn: Spawn, tmp_path: Path) -> Path:
    log = tmp_path / "tool-calls"
    log.touch()
    spawn("fuzz.targets:ToolCaller", FUZZ_TOOL_LOG=str(log))
    return log


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tool_args)
@example({**VALID, "amount": 0})
@example({**VALID, "to": "two@a.example, three@b.example"})
@example(["not", "an", "object"])  # regression: TypeError in ctx.tool, retried as a crash
@example("text")
@example(VALID)
async def test_the_runtime_refuses_hostile_arguments_before_the_tool_runs(
    bus: Bus, tool_log: Path, args: Any
) -> None:
    args = json.loads(json.dumps(args))  # what the agent decodes from its task
    expected = refusal({} if args is None else args)  # ctx.tool(t, None) means no arguments
    before = len(tool_log.read_text().splitlines())
    outcome = await submit(
        bus, "fuzz-tool-caller", msgspec.json.encode({"args": args}), wait=True, timeout_s=30
    )
    ran = len(tool_log.read_text().splitlines()) - before
    if expected is None:
        assert outcome.status == "completed" and outcome.result == {"ok": True}, outcome
        assert ran == 1
    else:
        assert outcome.status == "failed", outcome
        assert outcome.error is not None and outcome.error.startswith("ToolArgumentsInvalid: "), (
            outcome
        )
        assert expected in outcome.error, outcome
        assert ran == 0, "the tool body ran on refused arguments"
