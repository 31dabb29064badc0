"""examples/interop, run as its README says, from the example's folder with the CLI: a run of
travel_planner calls the published MCP server mcp-server-time and, over A2A, the quoter served by
`relaybus a2a serve`; both calls are gated, charged at the declared prices and traced, and the
quoter's run is its own, submitted by the A2A caller's user."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .conftest import ROOT

EXAMPLE = ROOT / "examples" / "interop"
SCOPES = ["mcp/time/get_current_time", "a2a/quoter"]
MCP_PRICE, A2A_PRICE = 2, 5000  # examples/interop/sources.toml
TRIP = {"destination": "tokyo", "timezone": "Asia/Tokyo", "nights": 3}


def example_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's shell in examples/interop: identity and ledger on, the venv's scripts on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBUS_")}
    env.update(
        RELAYBUS_HOME=str(home),
        RELAYBUS_IDENTITY="1",
        RELAYBUS_LEDGER="1",
        PYTHONPATH=str(ROOT),  # relaybus from this checkout; `agents` is the example's agents.py
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    env.update(extra)
    return env


class Example:
    """The example's stack under `home`, and the processes started for it (each stopped by
    its own handle at the end)."""

    def __init__(self, home: Path, logs: Path) -> None:
        self.home, self.logs = home, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        logs.mkdir()

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relaybus.cli", *args],
            capture_output=True,
            text=True,
            cwd=EXAMPLE,
            env=example_env(self.home),
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 90) -> str:
        done = self.cli(*args, timeout=timeout)
        assert done.returncode == 0, f"relaybus {' '.join(args)}: {done.stderr}\n{self.tails()}"
        return done.stdout

    def start(
        self, name: str, *args: str, pipe: bool = False, **env: str
    ) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "relaybus.cli", *args],
                cwd=EXAMPLE,
                env=example_env(self.home, **env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else log,
                stderr=log,
            )
        self.procs.append(proc)
        return proc

    def tails(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.logs.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Example]:
    stack = Example(tmp_path / "home", tmp_path / "logs")
    stack.ok("up", "--detach", "--json")
    try:
        yield stack
    finally:
        stack.stop()
        down = stack.cli("down")
        assert down.returncode == 0, down.stderr


def first_line(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> str:
    """The first line `proc` prints, waited for at most `timeout_s`."""
    assert proc.stdout is not None
    deadline, line = time.monotonic() + timeout_s, b""
    while b"\n" not in line and time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line += os.read(proc.stdout.fileno(), 4096)
    return line.decode(errors="replace").split("\n")[0]


def test_one_mcp_tool_and_one_a2a_call_in_a_real_run(example: Example, tmp_path: Path) -> None:
    # Given the agents and users the README registers
    example.ok("identity", "agent", "add", "quoter")
    example.ok(
        "identity", "agent", "add", "travel_planner", *(a for s in SCOPES for a in ("--scope", s))
    )
    example.ok("identity", "user", "add", "alice", *(a for s in SCOPES for a in ("--scope", s)))
    example.ok("identity", "user", "add", "traveldesk")
    alice = json.loads(example.ok("identity", "user", "token", "alice", "--json"))["token"]
    desk = json.loads(example.ok("identity", "user", "token", "traveldesk", "--json"))["token"]

    # and the quoter served over A2A (any free port here; the README's 8090 in sources.toml)
    served = example.start(
        "a2a", "a2a", "serve", "--agent", "quoter", "--http", "127.0.0.1:0", pipe=True
    )
    announced = re.search(
        r"A2A agent quoter at (http://127\.0\.0\.1:\d+)/agents/quoter", first_line(served)
    )
    assert announced, f"relaybus a2a serve did not start\n{example.tails()}"
    readme_sources = (EXAMPLE / "sources.toml").read_text()
    assert readme_sources.count("http://127.0.0.1:8090") == 1
    sources = tmp_path / "sources.toml"
    sources.write_text(readme_sources.replace("http://127.0.0.1:8090", announced[1]))

    example.start("quoter", "agent", "run", "agents:Quoter")
    example.start(
        "travel_planner",
        "agent",
        "run",
        "agents:TravelPlanner",
        RELAYBUS_DATA_SOURCES=str(sources),
        QUOTER_TOKEN=desk,
    )

    # When alice publishes a trip
    asked_at = datetime.now(UTC)
    out = example.ok(
        "publish",
        "travel_planner",
        json.dumps(TRIP),
        "--as",
        "alice",
        "--token",
        alice,
        "--wait",
        "--json",
        "--timeout",
        "90",
        timeout=120,
    )
    run = json.loads(out)

    # Then the run completed with the time from mcp-server-time and the quoter's quote
    assert run["status"] == "completed", f"{run}\n{example.tails()}"
    result = run["result"]
    local = datetime.fromisoformat(result["local_time"])
    assert local.utcoffset() == timedelta(hours=9)  # Asia/Tokyo, as the MCP server answered
    assert abs(local - asked_at) < timedelta(minutes=5)
    assert result["quote"] == {
        "destination": "tokyo",
        "nights": 3,
        "nightly_usd": 210,
        "total_usd": 630,
    }
    # and the ledger charged the declared prices, once each
    assert run["cost"] == MCP_PRICE + A2A_PRICE

    # `relaybus trace RUN` shows both tool calls with their costs, matching the ledger
    trace = json.loads(example.ok("trace", run["run_id"], "--json"))
    (task,) = trace["tasks"]
    tools = [(c["kind"], c["name"], c["cost"]) for c in task["calls"]]
    assert tools == [
        ("tool", "time.get_current_time", MCP_PRICE),
        ("tool", "a2a.quoter", A2A_PRICE),
    ]
    assert trace["cost_check"] == "matches the ledger"

    # The quoter's run is its own, submitted by the A2A caller's user (traveldesk), and it
    # knows on whose behalf the call came
    quote_run = result["quote_run"]
    runs = {r["run_id"]: r for r in json.loads(example.ok("runs", "--json"))}
    assert runs[run["run_id"]]["agent"] == "travel_planner"
    assert runs[quote_run]["agent"] == "quoter" and runs[quote_run]["status"] == "completed"
    (root,) = json.loads(example.ok("identity", "chain", quote_run, "--json"))
    assert (root["issuer"], root["principal"], root["subject"]) == (
        "user:traveldesk",
        "traveldesk",
        "quoter",
    )
    sends = [
        r
        for r in json.loads(example.ok("identity", "audit", "traveldesk", "--json"))
        if r["action"] == "a2a/send" and r["run_id"] == quote_run
    ]
    assert [r["detail"]["delegated_by"] for r in sends] == [["user:alice", "agent:travel_planner"]]

    # A run budget below the A2A call's price stops the run there: the quoter is never asked
    over = example.cli(
        "publish", "travel_planner", json.dumps(TRIP), "--token", alice,  # --as: the token's
        "--budget", "100", "--wait", "--json", "--timeout", "90", timeout=120,
    )  # fmt: skip
    stopped = json.loads(over.stdout)
    assert over.returncode == 1 and stopped["status"] == "failed", stopped
    assert stopped["error"].startswith("BudgetExceeded: budget run:"), stopped["error"]
    assert stopped["cost"] == MCP_PRICE
    quoted = [r for r in json.loads(example.ok("runs", "--json")) if r["agent"] == "quoter"]
    assert [r["run_id"] for r in quoted] == [quote_run]
