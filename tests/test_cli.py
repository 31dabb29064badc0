"""The CLI contract, as a user in a second terminal would use it."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus.agents.submit import wait_for_run
from relaybus.bus import Bus, Settings
from relaybus.bus.feed import EventFeed

from .conftest import ROOT, TESTS


def relaybus_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBUS_")}
    env.update({"RELAYBUS_HOME": str(home), "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}, **extra)
    return env


def relaybus(
    home: Path, *args: str, timeout: float = 90, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybus.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=relaybus_env(home, **extra),
        timeout=timeout,
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    up = relaybus(home, "up", "--detach", "--json")
    assert up.returncode == 0, up.stderr
    try:
        yield home
    finally:
        down = relaybus(home, "down", "--json")
        assert down.returncode == 0, down.stderr


@pytest.fixture
def agent_procs() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


def start_agent(
    home: Path, procs: list[subprocess.Popen[str]], spec: str, *args: str, **extra: str
) -> None:
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", "agent", "run", spec, *args],
            cwd=ROOT,
            env=relaybus_env(home, **extra),
            text=True,
        )
    )


def test_up_publish_wait_down_from_another_terminal(
    stack: Path, agent_procs: list[subprocess.Popen[str]]
) -> None:
    status = json.loads(relaybus(stack, "status", "--json").stdout)
    assert status["services"]["nats"] == "up" and status["nats_url"].startswith("nats://127.0.0.1:")
    start_agent(stack, agent_procs, "relaybus.agents.demo.echo:Echo", "--replicas", "2")
    out = relaybus(stack, "publish", "echo", '{"x": 1}', "--wait", "--json", "--timeout", "60")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["status"] == "completed" and body["result"] == {"x": 1} and body["error"] is None
    assert set(body) == {"run_id", "status", "result", "error", "cost"}
    status = json.loads(relaybus(stack, "status", "--json").stdout)
    assert {"name": "echo", "replicas": 2} == {
        k: status["agents"][0][k] for k in ("name", "replicas")
    }


def test_publish_without_wait_returns_the_run_id_once_accepted(stack: Path) -> None:
    out = relaybus(stack, "publish", "nobody-yet", '{"a": 1}', "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["run_id"]) == 26
    assert "no agent 'nobody-yet' has started yet" in out.stderr


def test_bad_cli_input_gets_one_line_errors(stack: Path) -> None:
    bad_json = relaybus(stack, "publish", "echo", '{"x": ', "--json")
    assert bad_json.returncode == 1 and bad_json.stderr.startswith(
        "error: the task is not valid JSON"
    )
    bad_agent = relaybus(stack, "publish", "ec.ho", "{}")
    assert bad_agent.returncode == 1 and "agent name 'ec.ho' is not allowed" in bad_agent.stderr
    # a user or run id the ingress would refuse is refused here too, in the same words
    bad_user = relaybus(stack, "publish", "echo", "{}", "--as", "a.b*")
    assert bad_user.returncode == 1 and "user must be 1-64 letters" in bad_user.stderr
    bad_run = relaybus(stack, "publish", "echo", "{}", "--run-id", "r 1")
    assert bad_run.returncode == 1 and "run id 'r 1' is not allowed" in bad_run.stderr
    for command in (["run", "show", "*"], ["cancel", "a.b"]):
        shown = relaybus(stack, *command)
        assert shown.returncode == 1 and "is not allowed: use 1-64" in shown.stderr, shown.stderr
    misspelt = relaybus(stack, "status", RELAYBUS_NATS_URLL="nats://127.0.0.1:1")
    assert (
        misspelt.returncode == 2
        and "RELAYBUS_NATS_URLL is not a relaybus setting" in misspelt.stderr
    )


def test_a_misspelt_option_is_named_by_its_command_with_the_closest_one(tmp_path: Path) -> None:
    for argv, usage, hint in (
        (["publish", "echo", "{}", "--wiat"], "relaybus publish", "did you mean --wait?"),
        (["ledger", "budget", "user:a", "--limt", "5"], "relaybus ledger budget", "--limit?"),
        (["runs", "extra"], "relaybus runs", ""),
        (["--bogus", "runs"], "relaybus", ""),  # given before any command: the top level's
    ):
        out = relaybus(tmp_path / "home", *argv)
        # not the top-level usage listing every command: the one given, and what to type
        assert out.returncode == 2 and f"usage: {usage} " in out.stderr, out.stderr
        assert f"{usage}: error: unrecognized arguments: " in out.stderr and hint in out.stderr


def test_commands_without_a_stack_say_how_to_start_one(tmp_path: Path) -> None:
    out = relaybus(tmp_path / "empty", "publish", "echo", "{}")
    assert out.returncode == 1 and "relaybus up --detach" in out.stderr
    # input wrong on its face is named before any stack is looked for
    swapped = relaybus(tmp_path / "empty", "publish", '{"x": 1}', "echo")
    assert swapped.returncode == 1 and "the agent comes first" in swapped.stderr
    for period in ("2026-13", "2026-02-30"):
        month = relaybus(tmp_path / "empty", "ledger", "statement", "alice", "--period", period)
        assert month.returncode == 1 and "a real month or day" in month.stderr


def test_second_up_on_the_same_home_is_refused(stack: Path) -> None:
    again = relaybus(stack, "up", "--detach")
    assert again.returncode == 1 and "already runs" in again.stderr


async def test_dead_letter_then_replay_keeps_the_run(
    stack: Path, agent_procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    # Given an agent whose dependency is down, with 2 attempts allowed
    flag = tmp_path / "dependency-up"
    start_agent(stack, agent_procs, "agents_for_tests:Fragile", RELAYBUS_MAX_DELIVER="2")
    out = relaybus(stack, "publish", "fragile", json.dumps({"log": str(flag)}), "--wait", "--json")
    failed = json.loads(out.stdout)
    assert (
        out.returncode == 1
        and failed["status"] == "failed"
        and "dependency is down" in failed["error"]
    )
    # Then the message is in the DLQ with its reason and attempts
    letters = json.loads(relaybus(stack, "dlq", "list", "--json").stdout)
    assert (
        len(letters) == 1
        and letters[0]["attempts"] == 2
        and letters[0]["run_id"] == failed["run_id"]
    )
    assert letters[0]["last_error"]["message"] == "dependency is down"
    # When the dependency is back and the letter is replayed
    flag.touch()
    settings = Settings.from_env({"RELAYBUS_HOME": str(stack)})
    async with Bus(settings) as bus, EventFeed(bus, failed["run_id"], replay=False) as feed:
        replay = relaybus(stack, "dlq", "replay", str(letters[0]["id"]), "--json")
        assert replay.returncode == 0, replay.stderr
        outcome = await wait_for_run(feed, failed["run_id"], 30)
    # Then the same run completes and the DLQ is empty
    assert outcome.status == "completed" and outcome.result == {"ok": True}, outcome
    assert json.loads(relaybus(stack, "dlq", "list", "--json").stdout) == []


def test_secure_stack_admits_only_registered_agents_on_their_nkeys(
    tmp_path: Path, agent_procs: list[subprocess.Popen[str]]
) -> None:
    # Given a stack started with NATS authorization on
    home = tmp_path / "secure"
    up = relaybus(home, "up", "--detach", "--json", RELAYBUS_NATS_AUTH="1")
    assert up.returncode == 0, up.stderr
    try:
        assert "@" not in json.loads(up.stdout)["nats_url"]  # the admin password is not printed
        # When the echo agent is registered (which creates its nkey and updates the server)
        added = relaybus(home, "identity", "agent", "add", "echo", "--scope", "echo")
        assert added.returncode == 0, added.stderr
        public = (home / "keys" / "echo.nk").read_bytes()
        from nkeys import from_seed

        nkey = from_seed(public).public_key.decode()
        for _ in range(100):  # the supervisor rewrites and reloads the block (bounded wait)
            if nkey in (home / "nats-auth.conf").read_text():
                break
            import time

            time.sleep(0.05)
        start_agent(home, agent_procs, "relaybus.agents.demo.echo:Echo", RELAYBUS_NATS_AUTH="1")
        out = relaybus(home, "publish", "echo", '{"x": 1}', "--wait", "--json", "--timeout", "60")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["result"] == {"x": 1}
        # registered again (docs/identity.md's command, to change its scopes), it keeps its keys:
        # new ones locked the running agent out of NATS, and its tasks timed out
        again = relaybus(home, "identity", "agent", "add", "echo", "--scope", "echo")
        assert again.returncode == 0 and "keys in" in again.stdout and "unchanged" in again.stdout
        assert (home / "keys" / "echo.nk").read_bytes() == public
        out = relaybus(home, "publish", "echo", '{"x": 2}', "--wait", "--json", "--timeout", "60")
        assert out.returncode == 0 and json.loads(out.stdout)["result"] == {"x": 2}, out.stderr
        # a token is revoked by the whole token too, sending only its id; twice says so
        relaybus(home, "identity", "user", "add", "tess", "--scope", "echo")
        token = relaybus(home, "identity", "user", "token", "tess").stdout.strip()
        first = relaybus(home, "identity", "user", "revoke", "tess", "--token", token)
        assert first.returncode == 0 and first.stdout == f"token {token.split('_')[2]} revoked\n"
        second = relaybus(home, "identity", "user", "revoke", "tess", "--token", token)
        assert "was revoked already" in second.stdout
        assert token.split("_")[3] not in first.stdout + second.stdout
        # Then an agent with a key the registry does not know cannot even connect
        from relaybus.services.identity.natsconfig import write_nkey

        write_nkey(home, "typed")
        stranger = subprocess.run(
            [sys.executable, "-m", "relaybus.cli", "agent", "run", "agents_for_tests:Typed"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env=relaybus_env(home, RELAYBUS_NATS_AUTH="1"),
        )
        assert stranger.returncode == 1 and "cannot connect to NATS" in stranger.stderr
    finally:
        assert relaybus(home, "down").returncode == 0


def test_memory_ingest_search_and_gc_from_the_cli(stack: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pricing.md").write_text("# Pricing\n\nAcme charges 40 euros per seat per month.\n")
    (docs / "people.md").write_text("# People\n\nThe sales lead at Acme is Dana.\n")
    out = relaybus(
        stack,
        "memory",
        "ingest",
        str(docs),
        "--collection",
        "competitors",
        "--as",
        "alice",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert sorted(f["source"] for f in json.loads(out.stdout)["files"]) == [
        "people.md",
        "pricing.md",
    ]
    found = relaybus(
        stack, "memory", "search", "how much does acme charge per seat", "--as", "alice", "--json"
    )
    hits = json.loads(found.stdout)
    assert hits[0]["source"] == "pricing.md" and "40 euros" in hits[0]["text"]
    other = relaybus(stack, "memory", "search", "acme", "--as", "mallory", "--json")
    assert other.returncode == 0 and json.loads(other.stdout) == []
    gc = relaybus(stack, "memory", "gc", "--dry-run", "--json")
    assert json.loads(gc.stdout)["dry_run"] is True
    bad = relaybus(
        stack, "memory", "ingest", str(tmp_path / "missing"), "--collection", "c", "--as", "alice"
    )
    assert bad.returncode == 1 and "no such file or folder" in bad.stderr


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free now (bounded search)."""
    import random
    import socket

    for _ in range(50):
        base = random.randint(20_000, 60_000)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports found")


def test_the_running_stack_serves_its_services_metrics(tmp_path: Path) -> None:
    import urllib.request

    home = tmp_path / "home"
    base = consecutive_free_ports(4)
    up = relaybus(home, "up", "--detach", "--metrics-port", str(base), "--json")
    assert up.returncode == 0, up.stderr
    try:
        budget = relaybus(home, "ledger", "budget", "user:dana", "--limit", "5000000", "--json")
        assert budget.returncode == 0, budget.stderr
        status = json.loads(relaybus(home, "status", "--json").stdout)
        assert set(status["metrics"]) == {"identity", "ledger", "memory", "ingress"}
        assert {int(url.rsplit(":", 1)[1].split("/")[0]) for url in status["metrics"].values()} == {
            base,
            base + 1,
            base + 2,
            base + 3,
        }
        with urllib.request.urlopen(status["metrics"]["ledger"], timeout=10) as response:
            text = response.read().decode()
        values = {
            line.split("{", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("relaybus_budget_") and 'budget="user:dana"' in line
        }
        assert values == {
            "relaybus_budget_limit": 5_000_000,
            "relaybus_budget_spent": 0,
            "relaybus_budget_held": 0,
        }, text[-3000:]
        plain = relaybus(home, "status").stdout
        assert f"metrics {status['metrics']['ledger']}" in plain
    finally:
        down = relaybus(home, "down", "--json")
        assert down.returncode == 0, down.stderr


def test_the_cli_speaks_with_one_voice(
    stack: Path, agent_procs: list[subprocess.Popen[str]]
) -> None:
    version = relaybus(stack, "--version")
    assert version.returncode == 0 and version.stdout.startswith("relaybus 0.")
    # lists print one JSON array with --json, `[]` when empty
    for command in (("runs",), ("dlq", "list"), ("ledger", "holds"), ("identity", "agent", "list")):
        out = relaybus(stack, *command, "--json")
        assert out.returncode == 0 and json.loads(out.stdout) == [], (command, out)
    # a handler bug: its traceback is kept with the run and its dead letter
    start_agent(stack, agent_procs, "agents_for_tests:Buggy", RELAYBUS_MAX_DELIVER="1")
    out = relaybus(stack, "publish", "buggy", '{"total": 10, "count": 0}', "--wait", "--json")
    failed = json.loads(out.stdout)
    assert out.returncode == 1 and failed["status"] == "failed", out
    run_id = failed["run_id"]
    shown = json.loads(relaybus(stack, "run", "show", run_id, "--json").stdout)
    assert shown["error"].startswith("ZeroDivisionError")
    assert "in average_price" in shown["traceback"] and "return total / count" in shown["traceback"]
    assert shown["started"].endswith("+00:00") and shown["waiting_for"] == []  # ISO, UTC
    text = relaybus(stack, "run", "show", run_id).stdout
    assert "None" not in text and "return total / count" in text
    started = next(line for line in text.splitlines() if line.startswith("started"))
    assert len(started.split()) == 3 and started.split()[1].count("-") == 2  # a date, a time
    (letter,) = json.loads(relaybus(stack, "dlq", "list", "--json").stdout)
    assert "in average_price" in letter["last_error"]["traceback"]
    runs = json.loads(relaybus(stack, "runs", "--json").stdout)
    assert [r["run_id"] for r in runs] == [run_id]
    # `watch --run` ends when the run has ended (a stream: JSON lines), tracebacks stay off it
    watch = relaybus(stack, "watch", "--run", run_id, "--json", timeout=60)
    assert watch.returncode == 0, watch.stderr
    events = [json.loads(line) for line in watch.stdout.splitlines()]
    assert events[0]["kind"] == "submitted" and "failed" in [e["kind"] for e in events]
    assert "traceback" not in watch.stdout
    # amounts carry their unit
    budget = relaybus(stack, "ledger", "budget", "user:dev", "--limit", "2500000")
    assert budget.returncode == 0 and budget.stdout == "budget user:dev: limit 2.50 USD\n"
    # a limit given later is added: the ones set before stay in force; 0 removes one
    for flags, now in (
        (["--max-steps", "3"], "limit 2.50 USD, max steps 3"),
        (["--period", "monthly"], "limit 2.50 USD monthly, max steps 3"),
        (
            ["--limit", "0", "--max-tokens", "900"],
            "limit none monthly, max steps 3, max tokens 900",
        ),
        (["--period", "none", "--max-steps", "0"], "limit none, max tokens 900"),
    ):
        budget = relaybus(stack, "ledger", "budget", "user:dev", *flags)
        assert (budget.returncode, budget.stdout) == (0, f"budget user:dev: {now}\n"), budget.stderr
    # a budget nothing has spent against yet is listed, with its step limit
    relaybus(stack, "ledger", "budget", "agent:idle", "--limit", "100", "--max-steps", "4")
    idle = relaybus(stack, "ledger", "levels", "--level", "agent:idle")
    assert idle.stdout.startswith("agent:idle ") and "steps=0/4" in idle.stdout, idle.stdout
    nothing = relaybus(stack, "ledger", "budget", "user:dev")
    assert nothing.returncode != 0 and "give --limit, --period" in nothing.stderr
    negative = relaybus(stack, "ledger", "budget", "user:dev", "--max-steps", "-1")
    assert "budget max_steps must be a whole number from 0 (none)" in negative.stderr


def test_an_unreachable_nats_server_is_one_line(tmp_path: Path) -> None:
    out = relaybus(
        tmp_path / "home",
        "runs",
        RELAYBUS_NATS_URL="nats://127.0.0.1:1",
        RELAYBUS_CONNECT_TIMEOUT_S="0.5",
    )
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith(
        "error: cannot connect to NATS at nats://127.0.0.1:1: connection refused"
    )
    assert "relaybus up --detach" in line


def test_a_killed_replica_is_restarted_and_status_tells_the_truth(
    stack: Path, agent_procs: list[subprocess.Popen[str]]
) -> None:
    import signal
    import time

    start_agent(stack, agent_procs, "relaybus.agents.demo.echo:Echo", "--replicas", "2")

    def echo_pids() -> list[int]:
        status = json.loads(relaybus(stack, "status", "--json").stdout)
        return next((a["pids"] for a in status["agents"] if a["name"] == "echo"), [])

    deadline = time.monotonic() + 60
    while len(echo_pids()) < 2:
        assert time.monotonic() < deadline, "two echo replicas never reported"
        time.sleep(0.3)
    killed, kept = echo_pids()
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        pids = echo_pids()
        assert killed not in pids  # a dead replica is never counted
        if len(pids) == 2:
            break
        assert time.monotonic() < deadline, f"the killed replica was not restarted: {pids}"
        time.sleep(0.3)
    assert kept in pids
    out = relaybus(stack, "publish", "echo", '{"x": 2}', "--wait", "--json", "--timeout", "60")
    assert out.returncode == 0 and json.loads(out.stdout)["result"] == {"x": 2}


@pytest.mark.parametrize("name", ["../identity/service", "../escaped", "a.b", "*", "x" * 300])
def test_an_agent_name_that_is_no_name_is_refused_before_any_key_is_written(
    tmp_path: Path, name: str
) -> None:
    # Given a home whose identity service has its signing key (the trust root)
    home = tmp_path / "home"
    trust_root = home / "identity" / "service.seed"
    trust_root.parent.mkdir(parents=True)
    trust_root.write_text("the identity service's key")
    # When an operator registers an agent under a name that is a path, a pattern or too long
    out = relaybus(home, "identity", "agent", "add", name, "--scope", "search")
    # Then it is refused, naming the rule, and nothing was written: not the trust root's key,
    # not a file beside it, not a stray key
    assert out.returncode == 1, out
    assert "agent name" in out.stderr and "is not allowed" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert trust_root.read_text() == "the identity service's key"
    assert sorted(p.relative_to(home) for p in home.rglob("*") if p.is_file()) == [
        Path("identity/service.seed")
    ]


@pytest.mark.parametrize(
    "flags",
    [
        ["--wait", "--timeout", "-5"],
        ["--deadline", "nan"],
        ["--deadline", "inf"],
        ["--max-steps", "99999999999999999999999"],
        ["--max-hops", "0"],
    ],
)
def test_publish_refuses_a_value_no_run_can_carry_before_it_sends_anything(
    tmp_path: Path, flags: list[str]
) -> None:
    # (no stack: the value is refused before any connection is tried)
    out = relaybus(
        tmp_path / "home",
        "publish",
        "echo",
        "{}",
        *flags,
        RELAYBUS_NATS_URL="nats://127.0.0.1:1",
        RELAYBUS_CONNECT_TIMEOUT_S="0.5",
    )
    assert out.returncode == 1, out
    assert "nothing was submitted" in out.stderr and "cannot connect" not in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


MISTAKES = """
from relaybus import Agent, Context


class Answerer(Agent):
    name = "answerer"

    async def handle(self, ctx: Context, task: dict) -> dict:
        return task


class Misspelt(Agent):
    name = "misspelt"

    async def handel(self, ctx: Context, task: dict) -> dict:
        return task


class NotAsync(Agent):
    name = "notasync"

    def handle(self, ctx: Context, task: dict) -> dict:
        return task
"""


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("mistakes:Answer", "mistakes has no 'Answer'; did you mean mistakes:Answerer?"),
        ("mistakes:Misspelt", "(is `handel` meant to be `handle`?)"),
        ("mistakes:NotAsync", "NotAsync.handle must be `async def handle(self, ctx, task)`"),
    ],
)
def test_an_agent_a_user_got_wrong_is_refused_at_start_naming_the_mistake(
    tmp_path: Path, spec: str, said: str
) -> None:
    # Given a user's module with a misnamed class, a misspelt `handle` and a plain `def handle`
    (tmp_path / "mistakes.py").write_text(MISTAKES)
    # When one is run (no stack needed: the class is checked first)
    out = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "agent", "run", spec],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=relaybus_env(tmp_path / "home"),
        timeout=60,
    )
    # Then it stops at once, saying what is wrong (it used to start, then fail every task, or
    # end in a NameError from the base class)
    assert out.returncode == 1, out
    assert said in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_watching_a_run_that_does_not_exist_says_so_and_keeps_waiting(stack: Path) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "relaybus.cli", "watch", "--run", "no-such-run", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=relaybus_env(stack),
    )
    try:
        assert watcher.stderr is not None
        ready, _, _ = select.select([watcher.stderr], [], [], 30)  # bounded
        line = watcher.stderr.readline() if ready else "(nothing in 30 s)"
        # Then it tells the user the run is not there (it used to wait silently for ever), and
        # goes on waiting: a run may be watched before it is submitted under its caller's id
        assert line.startswith("note: no run no-such-run yet; waiting for it"), line
        time.sleep(0.5)
        assert watcher.poll() is None
    finally:
        watcher.terminate()
        watcher.communicate(timeout=20)  # reaps it and closes its pipes


def test_an_agent_running_across_down_and_up_finds_the_new_stack(
    stack: Path, agent_procs: list[subprocess.Popen[str]]
) -> None:
    # Given an agent answering on the stack
    start_agent(stack, agent_procs, "relaybus.agents.demo.echo:Echo")
    first = relaybus(stack, "publish", "echo", '{"n": 1}', "--wait", "--json", "--timeout", "60")
    assert first.returncode == 0, first.stderr
    # When the stack is stopped and started again while the agent keeps running
    assert relaybus(stack, "down", "--json").returncode == 0
    up = relaybus(stack, "up", "--detach", "--json")
    assert up.returncode == 0, up.stderr
    # Then the new stack listens where the old one did, the agent reconnects on its own, and
    # a task reaches it (it used to retry the old port for ever while the stack took another)
    again = relaybus(stack, "publish", "echo", '{"n": 2}', "--wait", "--json", "--timeout", "60")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["result"] == {"n": 2}


@pytest.mark.parametrize("detach", [True, False])
def test_a_second_up_on_a_running_home_says_so_without_its_password(
    stack: Path, detach: bool
) -> None:
    out = relaybus(stack, "up", *(["--detach"] if detach else []), timeout=60)
    assert out.returncode == 1, out
    assert f"a stack already runs under {stack.resolve()}" in out.stderr, out.stderr
    assert "relaybus down" in out.stderr
    assert "operator:" not in out.stderr and "@127.0.0.1" not in out.stderr, out.stderr


def test_an_agent_run_with_no_stack_up_says_to_start_one(tmp_path: Path) -> None:
    out = relaybus(tmp_path / "home", "agent", "run", "relaybus.agents.demo.echo:Echo", timeout=60)
    assert out.returncode == 1, out
    assert "no relaybus stack runs under" in out.stderr, out.stderr
    assert "relaybus up --detach" in out.stderr and "Traceback" not in out.stderr


def test_approve_with_a_signal_the_run_does_not_wait_for_says_what_it_waits_for(
    stack: Path, agent_procs: list[subprocess.Popen[str]]
) -> None:
    start_agent(stack, agent_procs, "runtime_agents:Approver")
    sent = relaybus(stack, "publish", "approver", '{"order": 7}', "--json")
    assert sent.returncode == 0, sent.stderr
    run_id = json.loads(sent.stdout)["run_id"]
    deadline = time.monotonic() + 60
    while True:  # bounded: until the run waits for its approval
        shown = json.loads(relaybus(stack, "run", "show", run_id, "--json").stdout)
        if shown.get("waiting_for"):
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.3)
    # When the operator mistypes the signal's name
    typo = relaybus(stack, "approve", run_id, "--signal", "aproval")
    # Then they are told what the run waits for (the typo itself is stored, as a signal sent
    # before the run asks for it would be)
    assert typo.returncode == 0, typo.stderr
    assert f"note: run {run_id} waits for 'approval', not 'aproval'" in typo.stderr
    bad = relaybus(stack, "approve", run_id, "--data", "yes")
    assert bad.returncode == 1 and "--data is not valid JSON" in bad.stderr, bad.stderr
    ok = relaybus(stack, "approve", run_id)
    assert ok.returncode == 0 and "note:" not in ok.stderr, ok.stderr
