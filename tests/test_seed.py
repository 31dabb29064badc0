"""The seed scenario end to end: `relaybus demo` as a user runs it, and the faults it must survive.

Real parts throughout: nats-server, the identity/ledger/memory service processes, every agent as
its own process, the scripted model over HTTP and a recording SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relaybus.agents.demo.procs import Processes
from relaybus.agents.demo.setup import (
    COMPETITORS,
    DEMO_USER,
    INJECTED_ADDRESS,
    SPECS,
    TEAM,
    register_demo,
    request_payload,
    write_prices,
)
from relaybus.agents.llm import ScriptedModel, serve_model
from relaybus.agents.submit import submit
from relaybus.agents.tools.mailbox import read_mailbox
from relaybus.bus import Bus, Settings, default_topology, ensure
from relaybus.bus.feed import EventFeed
from relaybus.services.identity.client import read_audit

from .conftest import ROOT, TESTS, Spawn, child_env, service_process, wait_for, wait_service


def demo_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYBUS_", "OTEL_"))}
    env.update(RELAYBUS_HOME=str(home), PYTHONPATH=f"{TESTS}{os.pathsep}{ROOT}", **extra)
    return env


def relaybus(
    env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybus.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def gate_denials(denials: list[Any]) -> list[Any]:
    """The run's denials but the code interpreter's refusal to start on a machine without
    bubblewrap (`make test` here; CI installs it): that one is the machine's, not the run's."""

    def field(d: Any, name: str) -> str:
        return str(d[name] if isinstance(d, dict) else getattr(d, name))

    return [
        d
        for d in denials
        if not (field(d, "action") == "code/run" and "needs bubblewrap" in field(d, "reason"))
    ]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def kept_home(tmp_path: Path) -> Iterator[Path]:
    """A RELAYBUS_HOME whose stack (left by `demo --keep`) is stopped by its recorded pids."""
    home = tmp_path / "home"
    yield home
    relaybus(demo_env(home), "down", timeout=60)


def test_demo_end_to_end_and_the_walkthrough_commands(kept_home: Path) -> None:
    env = demo_env(kept_home)
    done = relaybus(env, "demo", "--json", "--keep")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    run_id = summary["run_id"]
    assert summary["status"] == "completed" and summary["error"] is None
    # the team got the report, once each; the injected address got nothing
    assert sorted(summary["delivered"]) == sorted(TEAM)
    mail = read_mailbox(kept_home / "mailbox.jsonl")
    assert sorted(to for m in mail for to in m["rcpt_tos"]) == sorted(TEAM)
    assert all(m["subject"] == "Competitive analysis" for m in mail)
    assert all(c in m["body"].lower() for m in mail for c in COMPETITORS)
    # the model did ask to mail the outside address (it follows the injected text) ...
    assert [r["to"] for r in summary["refused"]] == [INJECTED_ADDRESS]
    # ... and the gate refused it, on the record
    (denial,) = gate_denials(summary["denials"])
    assert denial["tool"] == "send_email"
    assert f"{INJECTED_ADDRESS} is outside team.example" in denial["reason"]
    assert summary["cost"] > 0 and summary["steps"] > 0
    assert all(c in summary["report"].lower() for c in COMPETITORS)
    assert "progress" not in done.stdout and "live events" in done.stderr

    # the README's walkthrough commands, against the kept stack
    audit = gate_denials(
        json.loads(
            relaybus(
                env, "identity", "audit", DEMO_USER, "--run", run_id, "--deny", "--json"
            ).stdout
        )
    )
    assert [a["tool"] for a in audit] == ["send_email"] and audit[0]["actor"] == "agent:email"
    tree = json.loads(relaybus(env, "trace", run_id, "--json").stdout)
    assert tree["cost"] == summary["cost"] and tree["ledger_cost"] == summary["cost"]
    assert "denied" in json.dumps(tree) and INJECTED_ADDRESS in json.dumps(tree)
    chain = relaybus(env, "identity", "chain", run_id, "--json")
    assert chain.returncode == 0 and "recipient_domain" in chain.stdout
    statement = json.loads(relaybus(env, "ledger", "statement", DEMO_USER, "--json").stdout)
    assert statement["total"] == summary["cost"]
    token = (kept_home / "demo-token").read_text()
    hits = json.loads(
        relaybus(
            env, "memory", "search", "globex pricing", "--as", DEMO_USER, "--token", token, "--json"
        ).stdout
    )
    assert hits and "globex" in hits[0]["text"].lower()
    watch = json_lines(relaybus(env, "watch", "--run", run_id, "--limit", "5", "--json").stdout)
    assert len(watch) == 5 and all(e["run_id"] == run_id for e in watch)


def test_a_budget_too_small_stops_the_run_with_a_clear_message_and_sends_nothing(
    kept_home: Path,
) -> None:
    home = kept_home
    done = relaybus(demo_env(home), "demo", "--json", "--budget", "3000")
    assert done.returncode == 1 and done.stdout.strip(), (
        done.stderr
    )  # the cause if the demo never ran
    summary = json.loads(done.stdout)
    assert summary["status"] == "failed" and summary["delivered"] == []
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: demo run") and "BudgetExceeded" in error
    assert "would go over" in error and "--budget 3000" in error
    assert 0 <= summary["cost"] <= 3000
    assert not (home / "mailbox.jsonl").exists() or read_mailbox(home / "mailbox.jsonl") == []
    # the demo stopped its stack, and the run stays in the home for when it is back
    assert json.loads(relaybus(demo_env(home), "status", "--json").stdout)["nats_url"] is None
    assert relaybus(demo_env(home), "up", "--detach").returncode == 0
    tree = json.loads(relaybus(demo_env(home), "trace", summary["run_id"], "--json").stdout)
    assert tree["status"] == "failed" and tree["cost"] == summary["cost"]


async def test_model_5xx_bursts_are_retried_and_the_run_completes(tmp_path: Path) -> None:
    model = ScriptedModel(fail_first=2, fail_every=3)  # 2 of every 3 requests answer 503
    server = await serve_model(model, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relaybus.cli",
            "demo",
            "--json",
            env=demo_env(tmp_path / "home", RELAYBUS_LLM_BASE_URL=url),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    finally:
        server.close()
        await server.wait_closed()
    assert proc.returncode == 0, err.decode()[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "completed"
    assert sorted(summary["delivered"]) == sorted(TEAM)
    answered = model.requests - 2 * (model.requests // 3) - min(model.requests % 3, 2)
    assert answered >= 6 and model.requests >= 3 * answered - 1  # every call saw a burst


# -- a worker killed mid-run -----------------------------------------------------------------


@pytest.fixture
async def seed_stack(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Settings, Bus, str, Path]]:
    """Identity, ledger and memory services, the scripted model and a recording SMTP server,
    each its own process; the demo's agents, user and budget registered."""
    procs = Processes(tmp_path / "logs")
    mailbox = tmp_path / "mailbox.jsonl"
    try:
        model_url = procs.start_server("model", "RELAYBUS_LLM_BASE_URL", "dev", "model")
        smtp_url = procs.start_server(
            "smtp", "RELAYBUS_SMTP_URL", "dev", "smtp", "--mailbox", str(mailbox)
        )
        home = settings.home.resolve()
        seeded = settings.with_values(
            identity=True,
            ledger=True,
            llm_base_url=model_url,
            llm_model="scripted",
            smtp_url=smtp_url,
            prices=write_prices(home, "scripted"),
            embedder="lexical",
        )
        with (
            service_process(seeded, "identity"),
            service_process(seeded, "ledger"),
            service_process(seeded, "memory"),
        ):
            async with Bus(seeded, name="test") as bus:
                await ensure(bus, default_topology(bus.subjects))
                for name in ("identity", "ledger", "memory"):
                    await wait_service(bus, name)
                token = await register_demo(bus, home)
                yield seeded, bus, token, mailbox
    finally:
        procs.stop_all()


async def test_a_mailer_killed_after_sending_still_yields_exactly_one_email_each(
    seed_stack: tuple[Settings, Bus, str, Path], spawn: Spawn
) -> None:
    settings, bus, token, mailbox = seed_stack
    env = child_env(settings)
    for name in ("orchestrator", "research", "writer"):
        spawn(SPECS[name], **{k: v for k, v in env.items() if k.startswith("RELAYBUS_")})
    first = spawn("seed_agents:PausingMailer", **env, MAILER_PAUSE_S="60")
    accepted = await submit(
        bus,
        "orchestrator",
        json.dumps(request_payload()).encode(),
        sender=f"user:{DEMO_USER}",
        token=token,
        budget=500_000,
    )
    await wait_for(lambda: len(read_mailbox(mailbox)) >= 2, 60, "the team's mail")
    await asyncio.sleep(0.5)  # the mailer has recorded its sends and sits in its pause step
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    spawn("seed_agents:PausingMailer", **env, MAILER_PAUSE_S="0")
    async with EventFeed(bus, accepted.run_id, replay=True) as feed:
        outcome = None
        while (event := await feed.next(60)) is not None:
            if event.kind in ("completed", "failed") and not event.parent_id:
                outcome = event
                break
    assert outcome is not None and outcome.kind == "completed", outcome
    result = json.loads(bytes(outcome.result))
    assert sorted(result["sent_to"]) == sorted(TEAM)
    mail = read_mailbox(mailbox)
    assert sorted(to for m in mail for to in m["rcpt_tos"]) == sorted(TEAM)  # no second send
    assert len({m["message_id"] for m in mail}) == 2
    denials = gate_denials(
        await read_audit(bus, DEMO_USER, run_id=accepted.run_id, decision="deny")
    )
    assert len(denials) == 1 and denials[0].tool == "send_email"  # the replay did not re-decide
