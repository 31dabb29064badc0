"""An agent process: the consume loop turned into durable task execution.

Each delivery to `relay.task.<agent>` is one of:
- task: start (or take over after a crash) a handler, replaying its journal;
- result / error: a child's outcome, merged into the parent's journal, resuming it when
  what it waits for has arrived;
- signal: an approval or a timer, merged the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from relaybus.agents.errors import DataRefused
from relaybus.bus import (
    Abandon,
    Bus,
    Delivery,
    Envelope,
    ErrorInfo,
    PermissionDenied,
    Reject,
    Retry,
    RetryPolicy,
    RunFailed,
    decode,
    encode,
    metrics,
)
from relaybus.bus.kv import Bucket, RevisionConflict
from relaybus.services.identity.client import IdentityGate, read_agent_key
from relaybus.services.identity.errors import ChainInvalid, RevocationUnknown
from relaybus.services.identity.settings import IdentitySettings
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import BudgetExceeded
from relaybus.services.ledger.prices import load_prices
from relaybus.services.ledger.settings import LedgerSettings
from relaybus.services.payments.errors import PaymentRefused
from relaybus.services.runs.client import look, run_writer
from relaybus.services.runs.state import (
    CancelTasks,
    CountFailure,
    RegisterWait,
)
from relaybus.services.runs.store import RunStore

from . import resuming, starting
from .base import Agent, encode_result, input_decoder
from .cancellation import Cancellations
from .charging import Costs, RunSpend
from .context import Context, HandoffDone, Suspend
from .degrade import on_budget_exceeded
from .errors import Cancelled, LimitExceeded, ToolArgumentsInvalid
from .evaluation import Evaluation
from .execution import Execution
from .guard import Guard, sender_problem
from .interceptors import Interceptor, Metrics, Tracing, run_task
from .journal import (
    FINAL,
    NOT_STORED,
    ClaimLost,
    Fenced,
    Journal,
    JournalDivergence,
    JournalStore,
    Op,
)
from .merging import Merges
from .messages import (
    StopTasks,
    TimerFired,
)
from .outcomes import Outcomes

log = logging.getLogger("relaybus.worker")
BEAT_INTERVAL_S = 20.0
PERMANENT = (
    Reject,
    JournalDivergence,
    LimitExceeded,
    RunFailed,
    ToolArgumentsInvalid,
    PermissionDenied,
    ChainInvalid,
    BudgetExceeded,
    Cancelled,
    DataRefused,
    PaymentRefused,
)
_owners = itertools.count()
A = TypeVar("A")
B = TypeVar("B")


class Worker:
    """Executes one agent's tasks durably. Built by `Worker.open(bus, agent)`."""

    def __init__(
        self,
        bus: Bus,
        agent: Agent,
        journals: JournalStore,
        runs: RunStore | None,
        gate: IdentityGate | None = None,
        ledger: LedgerClient | None = None,
    ) -> None:
        self.bus = bus
        self.gate = gate
        self.agent = agent
        self.name: str = agent.name
        self.retry = agent.retry or RetryPolicy(attempts=bus.settings.max_deliver)
        prices = load_prices(LedgerSettings.of(bus.settings).prices)
        self.costs = Costs(bus, agent.name, ledger, prices)
        self.journals = journals
        self.merges = Merges(journals)  # outcomes into waiting tasks' journals, in groups
        self.runs = runs
        self.run_writer = run_writer(bus, runs, agent.name)
        self.decode_input = input_decoder(agent.input_type())
        self.cancellations = Cancellations(bus.subjects)
        self.on_control = self.cancellations.on_control  # the process subscribes it to controls
        self._host = socket.gethostname()
        self._journaling = 0.0  # how often a first execution wrote its journal before its end
        self._llm: LLMClient | None = None
        self.interceptors: list[Interceptor] = [
            Tracing(),
            Metrics(),
            *agent.interceptors,
            Evaluation(self),
        ]
        self.outcomes = Outcomes(bus, agent.name, self.run_writer, self.costs)
        self.emit_event = self.outcomes.emit  # one run event (the port's `emit_event`)
        self.guard = Guard(bus, agent.name, gate, journals, self.emit_event)

    @classmethod
    async def open(cls, bus: Bus, agent: Agent) -> Worker:
        journals = JournalStore(await Bucket.open(bus, bus.subjects.bucket("journal")), agent.name)
        runs = (  # under NATS authentication the run authority holds the records
            None
            if bus.settings.nats_auth
            else RunStore(await Bucket.open(bus, bus.subjects.bucket("runs")))
        )
        gate = None
        if IdentitySettings.of(bus.settings).identity:
            key = read_agent_key(bus.settings.home.resolve(), agent.name)
            gate = await IdentityGate.open(bus, agent.name, key)
        ledger = LedgerClient(bus) if LedgerSettings.of(bus.settings).ledger else None
        return cls(bus, agent, journals, runs, gate, ledger)

    def llm_client(self) -> LLMClient:
        """This process's LLM client (RELAYBUS_LLM_*), created on first use."""
        if self._llm is None:
            from .llm.client import LLMClient  # httpx loads with the first model call

            self._llm = LLMClient(self.bus.settings)
        return self._llm

    async def close(self) -> None:
        await self.outcomes.starts.aclose()
        if self.runs is not None:
            await self.runs.drain()
        if self._llm is not None:
            await self._llm.aclose()

    @property
    def journals_early(self) -> bool:
        """Whether this agent's tasks mostly write their journal before they end (a step, a
        tool, a child): then a first delivery stores it at once, beside the record's read,
        instead of in the handler's path; a task that journals nothing skips that write."""
        return self._journaling > 0.5

    def _learn_journaling(self, d: Delivery, *, wrote: bool) -> None:
        if d.attempt == 1 and not d.replayed and d.envelope.kind == "task":
            self._journaling += 0.2 * ((1.0 if wrote else 0.0) - self._journaling)

    def new_owner(self) -> str:
        return f"{self.name}@{self._host}:{os.getpid()}#{next(_owners)}"

    # -- dispatch -----------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        env = delivery.envelope
        kind = env.kind
        problem = sender_problem(delivery, self.name)
        if problem:
            await self.guard.refuse(env, delivery, problem)
        if delivery.attempt == 1:
            labels = {"agent": self.name, "kind": kind}
            metrics.HANDOFFS.add(1, labels)
            if env.created_at:
                metrics.HANDOFF_LATENCY.record(max(0.0, time.time() - env.created_at), labels)
        if kind == "task":
            await self.on_task(delivery)
        elif kind in ("result", "error"):
            await self.on_outcome(delivery)
        else:
            await self.on_signal(delivery)

    async def started_out(self, env: Envelope) -> None:
        await self.outcomes.starts.out(env.id)

    async def on_task(self, d: Delivery) -> None:
        await starting.on_task(self, d)

    async def on_outcome(self, d: Delivery) -> None:
        await resuming.on_outcome(self, d)

    async def on_signal(self, d: Delivery) -> None:
        await resuming.on_signal(self, d)

    # -- execution ------------------------------------------------------------------------

    async def execute(
        self,
        journal: Journal,
        revision: int,
        owner: str,
        d: Delivery,
        claim: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run the task of `journal` (at `revision`) as `owner`, driven by delivery `d`. With
        `claim`, `journal` holds a claim not stored yet (a woken task's): its first write stores
        it, then calls `claim`; `ClaimLost` if that write met a journal that moved."""
        env = decode(journal.task)
        ex = Execution(self, env, journal, revision, owner, d.lease, claim=claim)
        ctx = Context(self, ex, d.attempt)
        try:
            with self.cancellations.running(env):
                await run_task(
                    self.interceptors, ctx, d.headers, lambda: self._run_handler(ctx, ex, d)
                )
        except ClaimLost:
            raise  # the journal moved while it woke: the caller merges what woke it again
        except Fenced as exc:
            log.warning("%s", exc)
            raise Abandon(str(exc)) from None
        finally:
            ex.close()

    async def _run_handler(self, ctx: Context, ex: Execution, d: Delivery) -> str:
        """Run the handler once; returns how this execution ended (for metrics)."""
        env = ex.envelope
        timeout = asyncio.timeout(env.deadline - time.time() if env.deadline else None)
        try:
            if self.gate is not None:
                ctx.chain = await self.guard.verify(env)
            if _budget_refused(ex.journal):
                refused = ErrorInfo(
                    type="Cancelled",
                    message="a budget resume was rejected (signal data false); the run stops",
                )
                await self._finish(ex, ctx.elapsed_ms(), "cancelled", error=refused)
                return "cancelled"
            task = self.decode_input(env.payload)
            async with timeout:
                result = await self.agent.handle(ctx, task)
            self._learn_journaling(d, wrote=ex.writes > 0 or ex.pending)
            if ex.publishing:  # otherwise what is pending goes in the end's write
                await ex.flush()
            body = encode_result(result)
        except Suspend:
            self._learn_journaling(d, wrote=True)
            await self.costs.settle_leases(env.run_id)
            await self.emit_event(env, "suspended", latency_ms=ctx.elapsed_ms())
            return "suspended"
        except HandoffDone as done:
            await self._finish(ex, ctx.elapsed_ms(), "completed", handoff=done.agent)
            await self.emit_event(
                env,
                "handoff",
                recipient=done.agent,
                child_id=done.task_id,
                latency_ms=ctx.elapsed_ms(),
            )
            return "handoff"
        except asyncio.CancelledError:
            if not self.cancellations.is_cancelled(env):
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await self._finish(
                ex,
                ctx.elapsed_ms(),
                "cancelled",
                error=ErrorInfo(type="Cancelled", message="cancelled"),
            )
            return "cancelled"
        except TimeoutError:
            if not timeout.expired():
                raise
            error = LimitExceeded(f"deadline exceeded while {self.name} was running")
            await self._finish(
                ex, ctx.elapsed_ms(), "failed", error=ErrorInfo.from_exception(error)
            )
            return "failed"
        except BudgetExceeded as exc:
            if outcome := await on_budget_exceeded(self, ctx, ex, exc):
                return outcome
            await self._finish(ex, ctx.elapsed_ms(), "failed", error=ErrorInfo.from_exception(exc))
            return "failed"
        except RevocationUnknown as exc:  # NATS failing over: no verdict on the chain yet
            raise Retry(f"{exc}; retrying", delay_s=2.0) from None
        except PERMANENT as exc:
            woken = ex.claim is not None  # its end may lose the claim: counted once it is stored
            if not woken:
                await self.run_writer.change(env.run_id, CountFailure(), env.chain)
            await self._finish(ex, ctx.elapsed_ms(), "failed", error=ErrorInfo.from_exception(exc))
            if woken:
                await self.run_writer.change(env.run_id, CountFailure(), env.chain)
            return "failed"
        except Fenced:
            raise
        except Exception as exc:
            info = ErrorInfo.from_exception(exc, with_traceback=True)
            if d.attempt >= self.retry.attempts:
                await self._finish(ex, ctx.elapsed_ms(), "failed", error=info)
            else:
                metrics.RETRIES.add(1, {"agent": self.name})
                with contextlib.suppress(Fenced):  # the next attempt is a retry, not a takeover
                    await ex.release()
                await self.run_writer.change(env.run_id, CountFailure(), env.chain)
                await self.emit_event(
                    env, "retried", attempt=d.attempt, error=info, latency_ms=ctx.elapsed_ms()
                )
            raise
        if await self._finish(ex, ctx.elapsed_ms(), "completed", body) != "completed":
            return "cancelled"
        for interceptor in self.interceptors:
            await interceptor.completed(ctx, body)
        return "completed"

    async def _finish(
        self,
        ex: Execution,
        latency_ms: float,
        status: str,
        result: bytes = b"",
        error: ErrorInfo | None = None,
        handoff: str = "",
    ) -> str:
        """End the task as `status` (stored, then delivered); returns how it ended."""
        ops = [] if ex.publishing else ex.take_ops()  # a failed handler's children never go

        def change(journal: Journal) -> None:
            have = len(journal.ops)
            journal.ops.extend(op for op in ops if op.seq >= have)
            journal.status = status  # type: ignore[assignment]
            journal.result = result
            journal.error = error
            journal.handoff = handoff
            journal.waiting = None

        await self.costs.settle_leases(ex.envelope.run_id)
        if _ends_unjournaled(ex, ops, status, handoff):
            # nothing to keep: no operation, no child, no delegation to show later. The end
            # goes only where it is awaited, the run's record (root) or the parent's journal
            # (child), whose writes take one end of a task and refuse or ignore a second; a
            # copy of this pure task run again meanwhile ends it the same way
            journal = msgspec.structs.replace(ex.journal, status=status, result=result)
            await self.deliver(ex.envelope, journal, latency_ms, ex.run_spent)
            return status
        verdict = ex.cancel_known() if ex.claim is not None else False
        if verdict:  # woken in a run (or as a task) cancelled while it waited: as if it had not
            status, result, error = "cancelled", b"", WOKEN_CANCELLED  # woken, nothing is sent
            await ex.mutate(change, announce=False)
            return "cancelled"
        if verdict is None:
            # woken, and this write stores the claim while the record's read is on its way: a
            # task that ends at once (nothing of it had an effect) needs the verdict only
            # before it delivers, so its end goes beside the read
            written, read = await asyncio.gather(
                ex.mutate(change, announce=False),
                ex.cancelled_while_waiting(),
                return_exceptions=True,
            )
            if isinstance(written, BaseException):
                raise written
            if isinstance(read, BaseException):  # no verdict: it goes where it is awaited
                log.warning("could not read run %s's record: %s", ex.envelope.run_id, read)
            elif read:
                await ex.mutate(_woken_cancelled)
                return "cancelled"
            journal = written
            await ex.announce_resumed()
        else:
            # the journal's end first: an execution that was taken over (Fenced here) must
            # not deliver an outcome, which would be the run's if it came first
            journal = await ex.mutate(change)
        await self.deliver(ex.envelope, journal, latency_ms, ex.run_spent)
        return status

    async def deliver(
        self,
        env: Envelope,
        journal: Journal,
        latency_ms: float = 0.0,
        run_spent: RunSpend | None = None,
    ) -> None:
        await self.outcomes.deliver(env, journal, latency_ms, run_spent)

    async def dead_lettered(self, d: Delivery, reason: str, error: ErrorInfo | None) -> None:
        """A task given up on (its attempts used up, or refused for good) fails as any failed
        task does: its caller gets the error, and on the run's line the run ends `failed`, so
        the run record, a waiting submitter and the events agree. Replaying the letter
        (`relaybus dlq replay`) reopens both."""
        env = d.envelope
        if env.kind != "task" or sender_problem(d, self.name):
            return
        if self.gate is not None:
            try:
                await self.guard.verify(env)
            except ChainInvalid:
                return
        failure = ErrorInfo(
            type="DeadLettered",
            message=reason,
            details={"last_error": f"{error.type}: {error.message}"} if error else {},
            traceback=error.traceback if error else "",
        )

        def fail(journal: Journal) -> None:
            if journal.status not in FINAL:
                journal.status, journal.error, journal.waiting = "failed", failure, None
                journal.owner = ""  # an execution still running (stalled) is fenced off

        found = await self.journals.load(env.run_id, env.id)
        if found is None:
            journal = Journal(run_id=env.run_id, task_id=env.id, agent=self.name, task=encode(env))
            fail(journal)
            try:
                await self.journals.create(journal)
            except RevisionConflict:
                found = await self.journals.load(env.run_id, env.id)
        if found is not None:  # ended already (e.g. failed on its last attempt): deliver again,
            journal, _ = await self.journals.mutate(env.run_id, env.id, fail, current=found)
        await self.deliver(env, journal)  # idempotent, in case a crash came before it went out

    def cheaper_model(self, model: str) -> str | None:
        return self.agent.cheaper_models.get(model)

    async def authorize(self, ctx: Context, tool: Any, args: Any) -> None:
        await self.guard.authorize(ctx, tool, args)

    async def delegate(self, env: Envelope, scopes: list[str] | None) -> Envelope:
        return await self.guard.delegate(env, scopes)

    async def signal_or_register(self, ctx: Context, name: str) -> bytes | None:
        """The signal's data if it was already sent; otherwise record that this task waits."""

        wait = RegisterWait(name=name, task_id=ctx.task_id)
        record, _ = await self.run_writer.change(ctx.run_id, wait, ctx.envelope.chain)
        return bytes(record.signals[name]) if name in record.signals else None

    async def start_timer(self, env: Envelope, timer_id: str, due: float) -> None:
        """Arm a durable timer: a message on the agent's own timer subject, redelivered when
        due (its own consumer; it holds none of the task consumer's slots while it waits)."""
        body = msgspec.json.encode(TimerFired(timer=timer_id, due=due))
        await self.bus.publish(
            Envelope(
                id=timer_id,
                run_id=env.run_id,
                kind="signal",
                sender=self.name,
                recipient=self.name,
                payload=body,
                parent_id=env.id,
                created_at=time.time(),
            ),
            subject=self.bus.subjects.timer(self.name),
        )

    async def cancelled_before_start(self, env: Envelope) -> bool:
        if self.cancellations.is_cancelled(env):
            return True
        run = await look(self.run_writer, env.run_id, env.chain)
        if run is None:
            return False
        if run.status == "cancelled":
            self.cancellations.learned(env.run_id)
        if env.id in run.cancelled_tasks:
            self.cancellations.learned(env.run_id, env.id)
        return self.cancellations.is_cancelled(env)

    def known_cancelled(self, env: Envelope) -> bool:
        return self.cancellations.is_cancelled(env)

    async def cancel_tasks(self, env: Envelope, task_ids: list[str]) -> None:
        run_id = env.run_id
        await self.run_writer.change(run_id, CancelTasks(task_ids=task_ids), env.chain)
        control = StopTasks(run_id=run_id, tasks=task_ids)
        subject = self.bus.subjects.control(run_id, self.bus.agent or "")
        await self.bus.publish_core(subject, msgspec.json.encode(control))


#: How a task woken in a run (or as a task) cancelled while it waited ends.
WOKEN_CANCELLED = ErrorInfo(type="Cancelled", message="cancelled while it waited")


def _woken_cancelled(journal: Journal) -> None:
    journal.status, journal.result, journal.error = "cancelled", b"", WOKEN_CANCELLED


def _budget_refused(journal: Journal) -> bool:
    """Whether someone answered a budget park with `false` (a console Reject, or
    `relaybus approve RUN --signal budget-N --data false`): that stops the run."""
    return any(
        name.startswith("budget-") and data.strip() == b"false"
        for name, data in journal.signals.items()
    )


if TYPE_CHECKING:  # the worker is the runtime behind every Context: mypy checks it fits the port
    from .llm.client import LLMClient
    from .port import RuntimePort

    _PORT_CHECK: type[RuntimePort] = Worker


def _ends_unjournaled(ex: Execution, ops: list[Op], status: str, handoff: str) -> bool:
    """Whether a task ends without a journal: a first execution that completed having
    recorded nothing (its journal never stored) and carrying no delegation chain (which
    `relaybus runs show` reads from the journals)."""
    return (
        ex.revision == NOT_STORED
        and ex.lease.held()  # a stalled execution ends through the fenced journal write
        and not ops
        and status == "completed"
        and not handoff
        and not ex.envelope.chain
    )
