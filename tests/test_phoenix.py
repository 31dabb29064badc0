"""A run as Arize Phoenix (a real OTLP backend, from PyPI) sees it, read back from its REST API:
one trace with one proper root, resumed work under the task's first execution (not under the
child that woke it), costed spans that add up to the ledger, the ledger service's own spans,
evaluations as EVALUATOR spans, and nothing sent to its traces-only endpoint as metrics.

Phoenix lives in its own virtualenv (its dependencies are many): `make test-slow` builds
`.venv-phoenix` and sets TEST_PHOENIX to its `phoenix` executable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relaybus.agents.llm import ScriptedModel, serve_model
from relaybus.agents.submit import submit
from relaybus.bus import Bus, Settings, default_topology, ensure
from relaybus.bus.server import free_port
from relaybus.services.ledger.client import LedgerClient

from .conftest import ROOT, Spawn, child_env, consuming, wait_service

PHOENIX = os.environ.get("TEST_PHOENIX", "")
JUDGE = {"match": "grading an AI agent", "reply": '{"score": 0.8, "reason": "cites the prices"}'}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not PHOENIX and not os.environ.get("TEST_NEEDS_PHOENIX"),
        reason="needs Arize Phoenix: `make test-slow` installs it into .venv-phoenix",
    ),
]


@pytest.fixture
def phoenix(tmp_path: Path) -> Iterator[str]:
    """`phoenix serve` on free loopback ports; its URL. Stopped by its pid."""
    assert PHOENIX, "TEST_PHOENIX must name the phoenix executable"
    port, grpc_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OTEL_"))},
        "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
    }
    log = (tmp_path / "phoenix.log").open("wb")
    proc = subprocess.Popen(
        [PHOENIX, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "phoenix.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "phoenix did not start within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
async def model_url() -> AsyncIterator[str]:
    server = await serve_model(ScriptedModel.from_rules([JUDGE]), "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.port}/v1"
    server.close()
    await server.wait_closed()


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, model_url: str) -> Settings:
    prices = tmp_path / "prices.toml"
    prices.write_text("[models.scripted]\ninput = 1\noutput = 2\n")
    return settings.with_values(
        ledger=True, prices=prices, llm_base_url=model_url, llm_model="scripted"
    )


def otel_env(phoenix: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix,
        "OTEL_METRICS_EXPORTER": "none",  # Phoenix takes traces only
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture
def ledger(settings: Settings, phoenix: str, tmp_path: Path) -> Iterator[Path]:
    """The ledger service exporting to Phoenix; yields its log file."""
    path = tmp_path / "ledger.log"
    with path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", "service", "ledger"],
            env=child_env(settings, **otel_env(phoenix)),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield path
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def phoenix_spans(url: str) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(50):  # bounded paging
        query = f"?limit=1000{'&cursor=' + cursor if cursor else ''}"
        with urllib.request.urlopen(f"{url}/v1/projects/default/spans{query}", timeout=10) as r:
            page = json.loads(r.read())
        spans += page["data"]
        cursor = page.get("next_cursor") or ""
        if not cursor:
            break
    return spans


def attribute(span: dict[str, Any], name: str) -> Any:
    """An attribute whether Phoenix keeps it flat (`a.b`) or nested (`{"a": {"b": …}}`)."""
    attributes = span.get("attributes") or {}
    if name in attributes:
        return attributes[name]
    value: Any = attributes
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


async def test_a_run_in_phoenix(
    settings: Settings, spawn: Spawn, phoenix: str, ledger: Path
) -> None:
    async with Bus(settings, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        await wait_service(bus, "ledger")
        spawn("observed_agents:Planner", **otel_env(phoenix))
        spawn("observed_agents:Pricer", **otel_env(phoenix))
        await consuming(bus, "planner", "pricer")
        outcome = await submit(
            bus, "planner", b'{"items": ["ab", "cde"]}', wait=True, timeout_s=60, budget=10_000
        )
        assert outcome.status == "completed", outcome
        cost = int((await LedgerClient(bus).run_cost(outcome.run_id))["spent"])

    def of_run() -> list[dict[str, Any]]:
        spans = phoenix_spans(phoenix)
        ours = {
            s["context"]["trace_id"]
            for s in spans
            if attribute(s, "relaybus.run_id") == outcome.run_id
        }
        return [s for s in spans if s["context"]["trace_id"] in ours]

    def orphans(spans: list[dict[str, Any]]) -> list[str]:
        ids = {s["context"]["span_id"] for s in spans}
        return [s["name"] for s in spans if s["parent_id"] and s["parent_id"] not in ids]

    # until the evaluations (after the result), the ledger's spans and every parent are in:
    # each process exports in batches of its own, so a child may arrive before its parent.
    # Poll off the event loop: the scripted model serves from it, and the judge's call (an
    # evaluation after the result) must be answered while we wait
    deadline = time.monotonic() + 60
    while True:
        spans = await asyncio.to_thread(of_run)
        kinds = {s.get("span_kind") for s in spans}
        ledger_in = any(s["name"].startswith("relaybus-ledger") for s in spans)
        if "EVALUATOR" in kinds and ledger_in and not orphans(spans):
            break
        assert time.monotonic() < deadline, (sorted({s["name"] for s in spans}), orphans(spans))
        await asyncio.sleep(1.0)

    # one trace, one root: the planner's first execution
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    ids = {s["context"]["span_id"] for s in spans}
    roots = [s for s in spans if not s["parent_id"]]
    assert [s["name"] for s in roots] == ["invoke_agent planner"], [s["name"] for s in roots]
    assert all(s["parent_id"] in ids for s in spans if s["parent_id"])
    # resumed work is a child of the first execution, not of the pricer that woke it
    (root,) = roots
    resumed = [s for s in spans if s["name"] == "invoke_agent planner" and s is not root]
    assert resumed and all(s["parent_id"] == root["context"]["span_id"] for s in resumed)
    # the costed spans add up to what the ledger charged
    costed = [
        attribute(s, "relaybus.cost")
        for s in spans
        if s["name"].startswith(("chat ", "execute_tool ")) and attribute(s, "relaybus.cost")
    ]
    assert len(costed) == 3 and sum(costed) == cost, (costed, cost)  # two tools, one LLM call
    # the ledger service's own spans, and the evaluations as EVALUATOR spans with their scores
    assert {s["name"] for s in spans} >= {"relaybus-ledger hold", "relaybus-ledger capture"}
    scores = {
        attribute(s, "gen_ai.evaluation.name"): attribute(s, "gen_ai.evaluation.score.value")
        for s in spans
        if s.get("span_kind") == "EVALUATOR"
    }
    assert scores == {"has_total": 1.0, "cheap": 0.0, "llm_judge": 0.8}
    # a traces-only backend: the ledger sent it no metrics (OTEL_METRICS_EXPORTER=none)
    assert "Failed to export metrics" not in ledger.read_text()
