"""The port between a handler's `Context` and the runtime that executes it.

`Context` (the API agent authors use) asks for every effect through this Protocol and knows
nothing else of the worker; `Worker` implements it (mypy checks that it does, see
`agents/worker.py`). A different runtime — an in-memory one for tests, a replayer — implements
the same port, as Temporal's workflow API talks to an abstract runtime its worker implements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from relaybus.bus import Bus, Envelope, ErrorInfo

if TYPE_CHECKING:
    from relaybus.services.identity.client import IdentityGate

    from .charging import Costs
    from .context import Context
    from .interceptors import Interceptor
    from .journal import JournalStore
    from .llm import LLMClient

__all__ = ["RuntimePort"]


class RuntimePort(Protocol):
    """What a Context needs from the runtime: publish and read through `bus`, the journal
    store, charging, authorization, delegation, timers, signals, cancellation and events."""

    name: str  # the agent this runtime executes
    bus: Bus
    journals: JournalStore
    costs: Costs
    gate: IdentityGate | None  # None: identity off (development)

    @property
    def interceptors(self) -> Sequence[Interceptor]:
        """Around handler executions and tool calls (agents/interceptors.py)."""

    def llm_client(self) -> LLMClient: ...

    def cheaper_model(self, model: str) -> str | None:
        """The model to fall back to when `model` is over budget (Agent.cheaper_models)."""
        ...

    async def authorize(self, ctx: Context, tool: Any, args: Any) -> None:
        """Refuse (PermissionDenied) a tool call the run's chain does not allow."""

    async def delegate(self, env: Envelope, scopes: list[str] | None) -> Envelope:
        """`env` (a child task or handoff) with the next link of the delegation chain."""

    async def signal_or_register(self, ctx: Context, name: str) -> bytes | None:
        """The signal's data if it arrived; otherwise register the wait and return None."""

    async def start_timer(self, env: Envelope, timer_id: str, due: float) -> None:
        """Wake the task at `due` (a durable timer)."""

    async def cancel_tasks(self, env: Envelope, task_ids: list[str]) -> None:
        """Stop the given child tasks of the run."""

    def known_cancelled(self, env: Envelope) -> bool:
        """Whether this process knows `env`'s run or `env` was cancelled (no read)."""

    async def cancelled_before_start(self, env: Envelope) -> bool:
        """Whether `env`'s run, or `env` itself, was cancelled (the run's record read, unless
        this process already knows); a task that finds it so stops before its first effect."""

    async def started_out(self, env: Envelope) -> None:
        """`env`'s held `started` event goes out now, before what the task creates."""

    async def emit_event(
        self,
        env: Envelope,
        kind: str,
        *,
        recipient: str | None = None,
        detail: str = "",
        attempt: int = 0,
        error: ErrorInfo | None = None,
        result: bytes = b"",
        cost: int = 0,
        latency_ms: float = 0.0,
        child_id: str = "",
        input_tokens: int = 0,
        output_tokens: int = 0,
        score: float | None = None,
    ) -> None:
        """Publish one run event (steps, tools, LLM calls, children, evaluations)."""
