"""`relaybus demo`: the smallest real thing, end to end.

Starts a private nats-server with JetStream, starts the echo agent as its own OS process,
publishes a task, waits for the result and prints it with the run's events.
(The full seed scenario replaces this once its agents exist.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bus import Bus, NatsServer, RelayError, Settings, default_topology, ensure
from bus.cli import event_line
from bus.feed import EventFeed

from ..observe import load_tree
from ..runtree import render
from ..submit import submit

DEMO_TASK = {"message": "hello from relaybus", "x": 1}


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the demo end to end on a private embedded stack")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=demo)


async def demo(args: argparse.Namespace, settings: Settings) -> int:
    say = (lambda *_: None) if args.json else print
    with tempfile.TemporaryDirectory(prefix="relaybus-demo-") as tmp:
        async with NatsServer(Path(tmp) / "nats", binary=settings.nats_server) as server:
            run_settings = settings.model_copy(update={"nats_url": server.url})
            say(f"• nats-server with JetStream on {server.url} (pid {server.pid})")
            async with Bus(run_settings, name="relaybus-demo") as bus:
                await ensure(bus, default_topology(bus.subjects))
                agent = _start_agent(run_settings, "agents.demo.echo:Echo")
                say(f"• echo agent started as its own process (pid {agent.pid})")
                try:
                    async with EventFeed(bus, replay=False) as feed:
                        outcome = await submit(
                            bus,
                            "echo",
                            json.dumps(DEMO_TASK).encode(),
                            wait=True,
                            timeout_s=args.timeout,
                        )
                        while (event := await feed.next(0.2)) is not None:
                            say("  " + event_line(event))
                    tree = await load_tree(bus, outcome.run_id)
                    say("• the run's tree (`relaybus trace RUN`):")
                    for line in render(tree):
                        say("  " + line)
                finally:
                    _stop(agent)
    out = outcome.as_json()
    if args.json:
        print(json.dumps(out))
    else:
        print(f"• run {outcome.run_id}: {outcome.status}")
        print(f"• result: {json.dumps(outcome.result)}")
    if outcome.status != "completed":
        raise RelayError(f"demo run {outcome.status}: {outcome.error}")
    return 0


def _start_agent(settings: Settings, spec: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.env(), "RELAYBUS_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "agent", "run", spec],
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
