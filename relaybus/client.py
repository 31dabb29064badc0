"""The client API: submit tasks to agents from your own service and follow their runs.

    async with relaybus.Client(user="alice", token=TOKEN) as client:
        run = await client.submit("research", {"topic": "tides"}, run_id="order-1842")
        print(await run.result(timeout_s=120))

A caller-chosen `run_id` makes submission idempotent, as a Temporal workflow id does: a second
`submit` with the same id returns the run already started (it never starts a second one), and
re-sends its task if the first attempt stopped before the task was stored. The CLI's `publish`,
`cancel` and `approve` are built on this class.
"""

from __future__ import annotations

import math
import os
from types import TracebackType
from typing import Any

import msgspec

from relaybus.agents.control import cancel_run, send_signal
from relaybus.agents.errors import SubmissionInvalid
from relaybus.agents.submit import RunIdTaken, RunOutcome, run_store, submit
from relaybus.agents.waiting import await_outcome
from relaybus.bus import Bus, RelayError, RunFailed, Settings
from relaybus.bus.errors import ErrorInfo, SubjectInvalid
from relaybus.bus.subjects import check_name
from relaybus.services.identity.messages import token_user
from relaybus.services.runs.shown import shown_one
from relaybus.services.runs.state import RunRecord

__all__ = ["Client", "Run", "RunIdTaken", "RunTimedOut"]


class RunTimedOut(RelayError):
    """The run did not end within the time the caller waited; it keeps running."""

    def __init__(self, run_id: str, timeout_s: float) -> None:
        super().__init__(
            f"run {run_id} did not end within {timeout_s:g}s; it keeps running — wait again "
            f"with `client.run({run_id!r}).result()` or cancel it"
        )
        self.run_id = run_id
        self.timeout_s = timeout_s


class Client:
    """One connection to a relaybus stack, acting for one user."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        user: str = "",
        token: str | None = None,
        name: str = "relaybus-client",
    ) -> None:
        self.settings = settings or Settings.from_env(os.environ)
        named = bool(user)
        # no user given: the one the token names (checked when used), else the dev user
        user = user or (token_user(token) if token else "") or "dev"
        self.user = user.removeprefix("user:")
        try:  # the ingress refuses such a user; so does this, before anything is sent
            check_name("user", self.user)
        except SubjectInvalid:
            if named:
                raise SubmissionInvalid("user", user, "1-64 letters, digits, '_' or '-'") from None
            raise SubmissionInvalid(  # the token's secret stays out of the message
                "token",
                f"{(token or '')[:12]}…",
                "`rb_<user>_…` as `relaybus identity user token` prints",
            ) from None
        self.token = token
        self._bus = Bus(self.settings, name=name)

    @property
    def bus(self) -> Bus:
        return self._bus

    @property
    def sender(self) -> str:
        return f"user:{self.user}"

    async def __aenter__(self) -> Client:
        await self._bus.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._bus.__aexit__(exc_type, exc, tb)

    async def submit(
        self,
        agent: str,
        payload: Any = None,
        *,
        run_id: str | None = None,
        max_hops: int = 32,
        max_steps: int = 0,
        deadline_s: float | None = None,
        scopes: list[str] | None = None,
        budget: int | None = None,
    ) -> Run:
        """Start a run of `agent` with `payload` (any JSON value; bytes are sent as they are).

        With `run_id`, submitting is idempotent: the same id returns the same run."""
        body = payload if isinstance(payload, bytes) else json_payload(payload)
        outcome = await submit(
            self._bus,
            agent,
            body,
            sender=self.sender,
            run_id=run_id,
            max_hops=max_hops,
            max_steps=max_steps,
            deadline_s=deadline_s,
            token=self.token,
            scopes=scopes,
            budget=budget,
        )
        return Run(self, outcome.run_id, agent)

    def run(self, run_id: str, agent: str | None = None) -> Run:
        """A handle to a run already submitted (by this client or another)."""
        return Run(self, run_id, agent)


def json_payload(payload: Any) -> bytes:
    """`payload` as JSON. NaN and infinities have no JSON form (msgspec would send `null`), so
    a payload holding one is refused rather than changed."""
    body = msgspec.json.encode(payload)
    if b"null" in body and _non_finite(msgspec.to_builtins(payload)):
        raise SubmissionInvalid("payload", "a NaN or infinite number", "JSON (which has no NaN)")
    return body


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


class Run:
    """A run handle: wait for its result, read its record, cancel it, signal it."""

    def __init__(self, client: Client, run_id: str, agent: str | None) -> None:
        self.client = client
        self.run_id = run_id
        self.agent = agent

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, agent={self.agent!r})"

    async def record(self) -> RunRecord:
        """The run's record as the runtime keeps it (status, cost, steps, waits); `running`
        once its first task started (`services/runs/shown.py`)."""
        found = await (await run_store(self.client.bus)).get(self.run_id)
        if found is None:
            raise RelayError(f"no run {self.run_id}; `relaybus runs` lists the recent ones")
        return await shown_one(self.client.bus, found)

    async def outcome(self, timeout_s: float = 60.0) -> RunOutcome:
        """How the run ended (status `timeout` if it did not within `timeout_s`)."""
        return await await_outcome(
            self.client.bus, self.run_id, timeout_s, must_exist=True, agent=self.agent or ""
        )

    async def result(self, timeout_s: float = 60.0) -> Any:
        """The run's result once it completed; RunFailed if it failed or was cancelled,
        RunTimedOut if it had not ended within `timeout_s`."""
        outcome = await self.outcome(timeout_s)
        if outcome.status == "completed":
            return outcome.result
        if outcome.status == "timeout":
            raise RunTimedOut(self.run_id, timeout_s)
        raise RunFailed(
            outcome.error_info
            or ErrorInfo(type=outcome.status.capitalize(), message=outcome.error or outcome.status)
        )

    async def cancel(self, reason: str = "cancelled by user") -> RunRecord:
        """Stop the run everywhere; its record says `cancelled` with `reason`."""
        return await cancel_run(self.client.bus, self.run_id, reason)

    async def signal(self, name: str, data: Any = True) -> bool:
        """Deliver signal `name` (an approval, an answer) to the run; True if a task was
        waiting for it, False if it is kept until the run asks."""
        return await send_signal(
            self.client.bus, self.run_id, name, data, sender=self.client.sender
        )
