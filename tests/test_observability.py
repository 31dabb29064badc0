"""Observability end to end: spans, metrics, `relaybus trace` / `watch` / `eval` / `runs`, all
read back from real processes (agents, the ledger service, a scripted model over HTTP)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relaybus.agents.llm import ScriptedModel, serve_model
from relaybus.agents.submit import submit
from relaybus.bus import Bus, Settings, default_topology, ensure
from relaybus.bus.server import free_port
from relaybus.bus.tracing import read_spans
from relaybus.services.ledger.client import LedgerClient

from .conftest import ROOT, Spawn, child_env, service_process, wait_for, wait_service

TOOL_COST = 5
JUDGE = {"match": "grading an AI agent", "reply": '{"score": 0.8, "reason": "cites the prices"}'}


@pytest.fixture
async def model_url() -> AsyncIterator[str]:
    server = await serve_model(ScriptedModel.from_rules([JUDGE]), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    server.close()
    await server.wait_closed()


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, model_url: str) -> Settings:
    prices = tmp_path / "prices.toml"
    prices.write_text("[models.scripted]\ninput = 1\noutput = 2\n")
    return settings.with_values(
        ledger=True,
        trace_dir=tmp_path / "spans",
        prices=prices,
        llm_base_url=model_url,
        llm_model="scripted",
    )


@pytest.fixture
def ledger_metrics_port(settings: Settings) -> Iterator[int]:
    port = free_port()
    with service_process(settings, "ledger", "--metrics-port", str(port)):
        yield port


@pytest.fixture
async def obus(settings: Settings, ledger_metrics_port: int) -> AsyncIterator[Bus]:
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        await wait_service(bus, "ledger")
        yield bus


def cli(settings: Settings, *args: str, lines: bool = False) -> Any:
    """Run `relaybus ARGS` and parse its JSON (a list of objects with `lines=True`)."""
    out = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", *args],
        env=child_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    if lines:
        return rows
    assert len(rows) == 1, rows
    return rows[0]


def scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode().splitlines()


def sample(lines: list[str], name: str, **labels: str) -> float | None:
    """The value of metric `name` whose labels include `labels`."""
    for line in lines:
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def total(lines: list[str], name: str, **labels: str) -> float:
    """The sum of metric `name` over every series whose labels include `labels`."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if (line.startswith(name + "{") or line.startswith(name + " "))
        and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


async def ledger_cost(bus: Bus, run_id: str) -> int:
    rows = await LedgerClient(bus).query("levels", level=f"run:{run_id}")
    return sum(int(r["spent"]) for r in rows if r["level"] == f"run:{run_id}")


def run_spans(settings: Settings, run_id: str) -> list[dict[str, Any]]:
    assert settings.trace_dir is not None
    return [
        s
        for s in read_spans(settings.trace_dir)
        if s["attributes"].get("relaybus.run_id") == run_id
    ]


async def test_a_run_is_traced_measured_and_explained_the_same_everywhere(
    obus: Bus, settings: Settings, spawn: Spawn, ledger_metrics_port: int
) -> None:
    agent_port = free_port()
    cli(
        settings,
        "ledger",
        "budget",
        "user:dev",
        "--limit",
        "1000000",
        "--period",
        "monthly",
        "--json",
    )
    spawn("observed_agents:Planner", "--metrics-port", str(agent_port))
    spawn("observed_agents:Pricer")
    spawn("observed_agents:Pricer")
    first, second = await asyncio.gather(
        submit(
            obus, "planner", b'{"items": ["ab", "cde"]}', wait=True, timeout_s=60, budget=10_000
        ),
        submit(obus, "planner", b'{"items": ["x"]}', wait=True, timeout_s=60, budget=10_000),
    )
    assert first.status == "completed" and second.status == "completed", (first, second)

    # cost: the ledger, the run record, `trace` and the ledger's metric agree
    cost = await ledger_cost(obus, first.run_id)
    assert cost > 2 * TOOL_COST  # two tool calls plus the LLM call's tokens
    assert first.cost == cost
    tree = cli(settings, "trace", first.run_id, "--json")
    assert tree["cost"] == tree["ledger_cost"] == tree["event_cost"] == cost
    assert tree["cost_check"] == "matches the ledger"
    # the ledger's metrics: spend by agent, tool and model, budgets; no series per run
    lines = scrape(ledger_metrics_port)
    assert total(lines, "relaybus_spent_total") == cost + second.cost
    assert total(lines, "relaybus_spent_total", tool="price") == 3 * TOOL_COST
    assert (
        total(lines, "relaybus_spent_total", model="scripted") == cost + second.cost - 3 * TOOL_COST
    )
    assert sample(lines, "relaybus_budget_spent", budget="user:dev") == cost + second.cost
    assert sample(lines, "relaybus_budget_limit", budget="user:dev") == 1_000_000
    assert not [line for line in lines if "run_id=" in line or "run=" in line]

    # the tree: planner at the root, two pricer children with their costed tool, the LLM call
    (root,) = tree["tasks"]
    assert root["agent"] == "planner" and root["status"] == "completed"
    assert [c["agent"] for c in root["children"]] == ["pricer", "pricer"]
    assert all(c["via"] == "call" for c in root["children"])
    assert all(
        [(k["kind"], k["name"], k["cost"]) for k in c["calls"]] == [("tool", "price", TOOL_COST)]
        for c in root["children"]
    )
    (llm,) = [c for c in root["calls"] if c["kind"] == "llm"]
    assert llm["name"] == "scripted" and llm["input_tokens"] > 0 and llm["output_tokens"] > 0
    assert tree["input_tokens"] == llm["input_tokens"]

    # spans: one trace per run, across processes; runs never mix
    # (evaluators run after the run's result is delivered, so its last span ends a bit later)
    await wait_for(
        lambda: any(
            e["name"] == "gen_ai.evaluation.result"
            for s in run_spans(settings, first.run_id)
            for e in s["events"]
        )
    )
    spans = run_spans(settings, first.run_id)
    assert len({s["trace_id"] for s in spans}) == 1
    assert {s["trace_id"] for s in run_spans(settings, second.run_id)}.isdisjoint(
        {spans[0]["trace_id"]}
    )
    assert len({s["service"] for s in spans}) == 2  # planner and pricer processes
    # the ledger's own work is in the run's trace: a server span per hold and capture
    assert settings.trace_dir is not None
    served = [
        s
        for s in read_spans(settings.trace_dir)
        if s["trace_id"] == spans[0]["trace_id"] and s["service"] == "ledger"
    ]
    assert {s["name"] for s in served} >= {"relaybus-ledger hold", "relaybus-ledger capture"}
    assert all(s["kind"] == "SERVER" and s["parent_id"] for s in served)
    # one proper root (the submitter did not trace), and no span's parent is missing
    ids = {s["span_id"] for s in spans}
    (root_span,) = [s for s in spans if s["parent_id"] is None]
    assert root_span["name"] == "invoke_agent planner"
    assert all(s["parent_id"] in ids for s in spans if s is not root_span), [
        (s["name"], s["parent_id"]) for s in spans if s["parent_id"] not in ids
    ]
    # resumed work is a child of the task's first execution, linked to what woke it
    later = [s for s in spans if s["name"] == "invoke_agent planner" and s is not root_span]
    assert later and all(s["parent_id"] == root_span["span_id"] for s in later)
    assert all(s["attributes"].get("relaybus.resumed") for s in later)
    names = {s["name"] for s in spans}
    assert {"invoke_agent planner", "invoke_agent pricer", "execute_tool price"} <= names
    assert {"ledger hold", "ledger capture", "chat scripted"} <= names
    chats = [s for s in spans if s["name"] == "chat scripted"]
    assert len(chats) == 2  # the planner's call and the LLM judge's
    (chat,) = [
        c for c in chats if c["attributes"]["gen_ai.usage.input_tokens"] == llm["input_tokens"]
    ]
    assert chat["attributes"]["gen_ai.usage.output_tokens"] == llm["output_tokens"]
    assert not chat["events"]  # prompt and completion text are not recorded by default
    # every costed span carries its cost: the trace adds up to what the ledger charged
    costed = [
        s["attributes"]["relaybus.cost"]
        for s in spans
        if s["name"].startswith(("chat ", "execute_tool ")) and "relaybus.cost" in s["attributes"]
    ]
    assert len(costed) == 3 and sum(costed) == cost  # two tool calls and the planner's LLM call
    # fan-in: the planner's resumed span links both children's spans, and lists them
    pricer_ids = {s["span_id"] for s in spans if s["name"] == "invoke_agent pricer"}
    resumed = [s for s in spans if s["name"] == "invoke_agent planner" and s["links"]]
    assert resumed
    assert {link["span_id"] for link in resumed[-1]["links"]} == pricer_ids
    assert set(resumed[-1]["attributes"]["relaybus.links"]) == pricer_ids
    # evaluations as spans a backend recognizes (OpenInference EVALUATOR), the judge's LLM call
    # inside its own
    evaluations = {
        s["attributes"]["gen_ai.evaluation.name"]: s
        for s in spans
        if s["attributes"].get("openinference.span.kind") == "EVALUATOR"
    }
    values = {k: v["attributes"]["gen_ai.evaluation.score.value"] for k, v in evaluations.items()}
    assert values == {"has_total": 1.0, "cheap": 0.0, "llm_judge": 0.8}
    (judged,) = [c for c in chats if c is not chat]
    assert judged["parent_id"] == evaluations["llm_judge"]["span_id"]
    # evaluation results on the run's span
    scored = [e for s in spans for e in s["events"] if e["name"] == "gen_ai.evaluation.result"]
    assert {e["attributes"]["gen_ai.evaluation.name"] for e in scored} == {
        "has_total",
        "cheap",
        "llm_judge",
    }

    # metrics from the agent process: handoffs, step durations, tokens
    await wait_for(
        lambda: (
            (
                sample(
                    scrape(agent_port), "relaybus_step_duration_seconds_count", outcome="completed"
                )
                or 0
            )
            >= 2
        ),
        what="both planner executions to end",
    )
    agent_lines = scrape(agent_port)
    assert (sample(agent_lines, "relaybus_handoffs_total", agent="planner", kind="task") or 0) >= 2
    # seconds buckets that fit agent work (not the SDK's millisecond-style 0..10000)
    buckets = [
        line.split('le="')[1].split('"')[0]
        for line in agent_lines
        if line.startswith("relaybus_step_duration_seconds_bucket{") and 'agent="planner"' in line
    ]
    assert {"0.01", "0.1", "1.0", "10.0", "60.0"} <= set(buckets), buckets
    assert "10000.0" not in buckets
    assert (
        sample(agent_lines, "gen_ai_client_token_usage_count", gen_ai_token_type="input") or 0
    ) >= 2
    assert (
        sample(agent_lines, "relaybus_step_duration_seconds_count", outcome="completed") or 0
    ) >= 2

    # evaluations: `relaybus eval RUN` and `--since`
    report = cli(settings, "eval", first.run_id, "--json")
    scores = {r["evaluator"]: r["score"] for r in report["evaluations"]}
    assert scores == {"has_total": 1.0, "cheap": 0.0, "llm_judge": 0.8}
    assert report["summary"]["llm_judge"]["mean"] == 0.8
    recent = cli(settings, "eval", "--since", "1h", "--json")
    assert {r["run_id"] for r in recent["evaluations"]} == {first.run_id, second.run_id}

    # `watch --run` replays the run's events with the contract's columns
    events = cli(settings, "watch", "--run", first.run_id, "--json", "--limit", "5", lines=True)
    assert all({"time", "run_id", "kind", "from", "to", "status"} <= e.keys() for e in events)
    assert events[0]["kind"] == "submitted"
    text = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "watch", "--run", first.run_id, "--limit", "3"],
        env=child_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert text[0].split()[:6] == ["time", "run", "from", "→", "to", "kind"]
    assert all(first.run_id in line for line in text[1:])

    # `runs` carries duration, failures and cost
    runs = cli(settings, "runs", "--json")
    row = next(r for r in runs if r["run_id"] == first.run_id)
    assert row["cost"] == cost and row["failures"] == 0 and row["duration_s"] > 0


async def test_cost_survives_a_killed_worker_and_its_retry_stays_in_the_trace(
    obus: Bus, settings: Settings, spawn: Spawn, ledger_metrics_port: int
) -> None:
    spawn("observed_agents:Planner")
    doomed = spawn("observed_agents:Pricer", PRICE_SLEEP_S="30")
    run = asyncio.create_task(
        submit(obus, "planner", b'{"items": ["abc"]}', wait=True, timeout_s=90, budget=10_000)
    )
    levels = LedgerClient(obus)

    async def held() -> bool:
        rows = await levels.query("holds")
        return any(r.get("payee") == "tool:price" for r in rows)

    for _ in range(200):  # bounded: until the tool's hold is open (the tool is sleeping)
        if await held():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the pricer never held its tool's price")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    spawn("observed_agents:Pricer")
    outcome = await run
    assert outcome.status == "completed", outcome
    cost = await ledger_cost(obus, outcome.run_id)
    assert outcome.cost == cost
    assert cost - TOOL_COST > 0  # one tool charge (the hold was reused, not doubled) + LLM
    tree = cli(settings, "trace", outcome.run_id, "--json")
    assert tree["cost"] == cost and tree["cost_check"] == "matches the ledger"
    assert sum(c["cost"] for c in tree["tasks"][0]["children"][0]["calls"]) == TOOL_COST
    assert total(scrape(ledger_metrics_port), "relaybus_spent_total", tool="price") == TOOL_COST
    # the retry ran on the other worker, in the same trace, with its delivery count
    await wait_for(
        lambda: any(
            s["name"] == "invoke_agent pricer" and s["attributes"]["relaybus.delivery_count"] >= 2
            for s in run_spans(settings, outcome.run_id)
        )
    )
    spans = run_spans(settings, outcome.run_id)
    assert len({s["trace_id"] for s in spans}) == 1
    retried = [s for s in spans if s["name"] == "invoke_agent pricer"]
    assert retried[-1]["attributes"]["relaybus.delivery_count"] >= 2


async def test_a_poison_message_dead_letters_inside_its_runs_trace(
    obus: Bus, settings: Settings, spawn: Spawn
) -> None:
    spawn("observed_agents:Poison")
    outcome = await submit(obus, "poison", b"{}", wait=True, timeout_s=60)
    assert outcome.status == "failed"
    await wait_for(
        lambda: (
            any(s["name"] == "dead_letter poison" for s in run_spans(settings, outcome.run_id))
            or len([s for s in run_spans(settings, outcome.run_id)]) >= 3
        ),
        what="the poison message's spans",
    )
    spans = run_spans(settings, outcome.run_id)
    attempts = [s for s in spans if s["name"] == "invoke_agent poison"]
    assert len(attempts) == settings.max_deliver
    assert sorted(s["attributes"]["relaybus.delivery_count"] for s in attempts) == [1, 2, 3]
    assert all(s["status"] == "ERROR" for s in attempts)
    assert len({s["trace_id"] for s in spans}) == 1  # every attempt in one trace per run
    tree = cli(settings, "trace", outcome.run_id, "--json")
    assert tree["status"] == "failed" and tree["tasks"][0]["attempts"] == settings.max_deliver
    assert "ValueError: poison pill" in " ".join(tree["tasks"][0]["errors"])
    runs = cli(settings, "runs", "--json")
    assert next(r for r in runs if r["run_id"] == outcome.run_id)["failures"] >= 2


async def test_a_failed_tool_call_shows_its_error_in_the_span_and_the_tree(
    obus: Bus, settings: Settings, spawn: Spawn
) -> None:
    spawn("observed_agents:Brittle")
    outcome = await submit(obus, "brittle", b"{}", wait=True, timeout_s=60)
    assert outcome.status == "failed"
    await wait_for(
        lambda: any(s["name"] == "execute_tool broken" for s in run_spans(settings, outcome.run_id))
    )
    (failed, *_) = [
        s for s in run_spans(settings, outcome.run_id) if s["name"] == "execute_tool broken"
    ]
    assert failed["status"] == "ERROR" and "upstream exploded on 7" in failed["error"]
    assert any(e["name"] == "exception" for e in failed["events"])
    tree = cli(settings, "trace", outcome.run_id, "--json")
    calls = tree["tasks"][0]["calls"]
    assert calls and all(c["error"] == "RuntimeError: upstream exploded on 7" for c in calls)
