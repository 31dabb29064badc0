"""Testing agents in a few lines of pytest: a real embedded nats-server, agents in this process.

    from relaybus.testing import AgentEnvironment

    async def test_echo() -> None:
        async with AgentEnvironment([Echo]) as env:
            run = await env.client.submit("echo", {"text": "hi"})
            assert await run.result() == {"echo": {"text": "hi"}}
            assert [op.kind for op in await env.journal_ops(run.run_id, "echo")] == [...]

The environment is a development stack (no NATS authentication, no identity or ledger
service): the same runtime, streams, journal and redelivery semantics as production, started in
a second. `crash(name)` stops an agent the way `kill -9` does (nothing acked, nothing drained)
and starts it again: its unfinished tasks come back after `ack_wait_s` and replay from the
journal, so a test can prove that an effect runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relaybus.agents.base import Agent
from relaybus.agents.journal import Journal, JournalStore, Op
from relaybus.agents.process import run_in_process
from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.bus.kv import Bucket
from relaybus.client import Client

__all__ = ["AgentEnvironment"]


class AgentEnvironment:
    """A nats-server of its own, the given agents consuming in this process, and a `client`."""

    def __init__(
        self,
        agents: Sequence[type[Agent] | Agent],
        *,
        home: Path | None = None,
        ack_wait_s: float = 2.0,
        max_deliver: int = 5,
        concurrency: int = 8,
        **settings: Any,
    ) -> None:
        self._agents = [a if isinstance(a, Agent) else a() for a in agents]
        self._home = home
        self._ack_wait_s = ack_wait_s
        self._max_deliver = max_deliver
        self._concurrency = concurrency
        self._overrides = settings
        self._stack = contextlib.AsyncExitStack()
        self._serving: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self._crashed: set[asyncio.Task[None]] = set()  # still winding down: waited for at exit
        self.settings: Settings
        self.client: Client

    async def __aenter__(self) -> AgentEnvironment:
        try:
            if self._home is None:
                tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="relaybus-"))
                self._home = Path(tmp)
            server = self._stack.enter_context(NatsServer(self._home / "nats"))
            self.settings = Settings.from_env(
                {},
                **{
                    "nats_url": server.url,
                    "prefix": "t" + secrets.token_hex(4),
                    "home": self._home,
                    "ack_wait_s": self._ack_wait_s,
                    "max_deliver": self._max_deliver,
                    "nats_auth": False,
                    "identity": False,
                    "ledger": False,
                    **self._overrides,
                },
            )
            async with Bus(self.settings, name="relaybus-testing") as bus:
                await ensure(bus, default_topology(bus.subjects))
            self.client = await self._stack.enter_async_context(
                Client(self.settings, user="tester")
            )
            for agent in self._agents:
                await self.start(agent)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for name in list(self._serving):
            await self.stop(name)
        if self._crashed:
            await asyncio.wait(self._crashed, timeout=10)
        await self._stack.aclose()

    async def start(self, agent: Agent) -> None:
        """Start consuming `agent`'s tasks (it must not be running yet)."""
        if agent.name in self._serving:
            raise RuntimeError(f"agent {agent.name} is already running in this environment")
        stop = asyncio.Event()
        ready = asyncio.Event()
        task = asyncio.create_task(
            run_in_process(agent, self.settings, self._concurrency, stop, ready),
            name=f"relaybus-agent-{agent.name}",
        )
        self._serving[agent.name] = (stop, task)
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            del self._serving[agent.name]
            task.result()  # the agent failed to start: raise why
            raise RuntimeError(f"agent {agent.name} stopped while starting")

    async def stop(self, name: str) -> None:
        """Drain agent `name` as SIGTERM would: in-flight tasks finish, then it stops."""
        stop, task = self._serving.pop(name)
        stop.set()
        await task

    async def crash(self, name: str, *, restart: bool = True) -> None:
        """Stop agent `name` at once, as `kill -9` would: nothing in flight is acked or
        finished. With `restart`, a fresh replica starts; the lost tasks are redelivered to it
        after `ack_wait_s` and replay from their journals."""
        _, task = self._serving.pop(name)
        task.cancel()
        # awaited without catching CancelledError: a cancellation of the caller (a test's
        # timeout) must end it here, not restart the agent and carry on
        self._crashed.add(task)
        await asyncio.wait({task})
        self._crashed.discard(task)
        if not task.cancelled():
            task.result()  # it had failed already: raise why
        if restart:
            agent = next(a for a in self._agents if a.name == name)
            await self.start(agent)

    async def journals(self, run_id: str) -> list[Journal]:
        """The journal of every task of the run (one per agent task), as the runtime keeps it."""
        bucket = await Bucket.open(self.client.bus, self.client.bus.subjects.bucket("journal"))
        found: list[Journal] = []
        for key in await bucket.keys():
            if key.startswith(f"{run_id}."):
                _, task_id, agent = key.split(".")
                loaded = await JournalStore(bucket, agent).load(run_id, task_id)
                if loaded is not None:
                    found.append(loaded[0])
        return found

    async def journal_ops(self, run_id: str, agent: str) -> list[Op]:
        """The recorded operations (steps, tool and LLM calls, children) of `agent`'s tasks in
        the run, in order: what a replay returns instead of running again."""
        return [op for j in await self.journals(run_id) if j.agent == agent for op in j.ops]
