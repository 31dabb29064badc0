"""The payments stack as real processes: nats-server (the session's), the identity and ledger
services, the sandbox provider and the webhook receiver; the user paula and payment agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from relaybus.agents.control import send_signal
from relaybus.agents.demo.procs import Processes
from relaybus.agents.submit import submit
from relaybus.bus import Bus, Event, Settings, default_topology, ensure
from relaybus.bus.feed import EventFeed
from relaybus.bus.server import free_port
from relaybus.services.identity.client import IdentityClient, write_agent_key
from relaybus.services.ledger.client import LedgerClient

from ..conftest import child_env, service_process, wait_service

KEY = "sk_test_sandbox"
SECRET = "whsec_test"
CHARGE = "payments/charge:max_amount=50000,currency=USD,payee=acme-air|globex-hotels"
USER_SCOPES = [f"{CHARGE},per_run_amount=60000", "payments/refund"]
UNIT = 10_000  # micro-units per cent
APPROVAL_OVER = 10_000
# agent → handoff_to; every one registered with the scope `payments`
AGENTS: dict[str, list[str]] = {
    "buyer": [],
    "concierge": [],
    "treasurer": ["buyer_a", "buyer_b"],
    "buyer_a": [],
    "buyer_b": [],
}


class Stack:
    def __init__(
        self, settings: Settings, bus: Bus, token: str, sandbox: str, procs: Processes
    ) -> None:
        self.settings, self.bus, self.token = settings, bus, token
        self.sandbox, self.procs = sandbox, procs

    async def run(self, agent: str, task: dict[str, Any], timeout_s: float = 60) -> Any:
        return await submit(
            self.bus,
            agent,
            json.dumps(task).encode(),
            sender="user:paula",
            token=self.token,
            wait=True,
            timeout_s=timeout_s,
        )

    async def start(self, agent: str, task: dict[str, Any]) -> str:
        accepted = await submit(
            self.bus, agent, json.dumps(task).encode(), sender="user:paula", token=self.token
        )
        return str(accepted.run_id)

    def intents(self, run_id: str) -> list[dict[str, Any]]:
        state = json.loads(Path(self.settings.home / "sandbox.json").read_text())
        return [i for i in state["intents"].values() if i["metadata"].get("run") == run_id]

    async def statement(self) -> dict[str, Any]:
        return dict(await LedgerClient(self.bus).query("statement", user="paula", period=""))

    async def run_approving(self, agent: str, task: dict[str, Any], timeout_s: float = 60) -> Event:
        """Run `task`, approving every payment that waits for a human; the run's final event."""
        run_id = await self.start(agent, task)
        approved: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with EventFeed(self.bus, run_id, replay=True) as feed:
            while loop.time() < deadline:
                for intent in self.intents(run_id):
                    payment = intent["metadata"]["relaybus_payment"]
                    if payment not in approved:
                        approved.add(payment)
                        await send_signal(self.bus, run_id, signal_of(payment), "approve")
                event = await feed.next(0.2)
                if event is not None and event.kind in ("completed", "failed"):
                    if not event.parent_id:
                        return event
        raise AssertionError(f"run {run_id} did not end within {timeout_s}s")


def signal_of(payment: str) -> str:
    """The signal a payment's approval waits for (`relaybus approve RUN --signal …`)."""
    return f"payment-{payment[-10:].lower()}"


async def wait_terminal(bus: Bus, run_id: str, timeout_s: float = 60) -> Event:
    async with EventFeed(bus, run_id, replay=True) as feed:
        while (event := await feed.next(timeout_s)) is not None:
            if event.kind in ("completed", "failed") and not event.parent_id:
                return event
    raise AssertionError(f"run {run_id} did not end within {timeout_s}s")


async def wait_waiting(bus: Bus, run_id: str, timeout_s: float = 30) -> list[str]:
    """The signals the run waits for, once it waits for one (bounded)."""
    from relaybus.agents.submit import run_store

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    runs = await run_store(bus)
    while loop.time() < deadline:
        record = await runs.get(run_id)
        if record is not None and record.waits:
            return sorted(record.waits)
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not wait for a signal within {timeout_s}s")


@contextlib.asynccontextmanager
async def payment_stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    procs = Processes(tmp_path / "logs")
    home = settings.home.resolve()
    base = settings.with_values(
        identity=True,
        ledger=True,
        payments_api_key=KEY,
        payments_webhook_secret=SECRET,
        payments_approval_over=APPROVAL_OVER,
    )
    try:
        with service_process(base, "identity"), service_process(base, "ledger"):
            async with Bus(base, name="test") as bus:
                await ensure(bus, default_topology(bus.subjects))
                await wait_service(bus, "identity")
                await wait_service(bus, "ledger")
                sandbox_port = free_port()  # the receiver must know the sandbox and vice versa
                sandbox_url = f"http://127.0.0.1:{sandbox_port}"
                receiver_url = procs.start_server(
                    "webhooks",
                    "webhook_url",
                    "payments",
                    "webhooks",
                    env=child_env(base, RELAYBUS_PAYMENTS_URL=sandbox_url),
                )
                assert sandbox_url == procs.start_server(
                    "sandbox",
                    "RELAYBUS_PAYMENTS_URL",
                    "payments",
                    "sandbox",
                    "--port",
                    str(sandbox_port),
                    "--state",
                    str(home / "sandbox.json"),
                    "--api-key",
                    KEY,
                    "--webhook-secret",
                    SECRET,
                    "--webhook-url",
                    receiver_url,
                )
                settled = base.with_values(payments_url=sandbox_url)
                identity = IdentityClient(bus)
                for name, handoff in AGENTS.items():
                    key = write_agent_key(home, name).verify_key
                    await identity.add_agent(name, key, ["payments"], handoff)
                await identity.add_user("paula", USER_SCOPES, [])
                token = (await identity.issue_token("paula"))["token"]
                yield Stack(settled, bus, token, sandbox_url, procs)
    finally:
        procs.stop_all()
