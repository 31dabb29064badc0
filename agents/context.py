"""`Context`: what a handler gets besides its task — and the journaled operations that make
its effects exactly-once.

Every operation with an effect or a non-deterministic result goes through the journal: on a
replay (redelivery, resume after a crash or after `gather`), recorded operations return their
recorded result and do not run again. A handler that asks for a different operation than the
journal recorded at that position fails with JournalDivergence.
"""

from __future__ import annotations

import inspect
import logging
import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import msgspec

from relaybus.agents.errors import CircuitOpen, DataRefused
from relaybus.bus import (
    Envelope,
    ErrorInfo,
    PermissionDenied,
    Reject,
    RelayError,
    Retry,
    Settings,
    tracing,
)
from relaybus.bus.envelope import derived_id
from relaybus.memory.client import MemoryClient
from relaybus.memory.messages import Caller
from relaybus.services.identity.chain import ChainView, decode_body
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.payments.errors import PaymentRefused

from .base import encode_result
from .errors import ChildFailed, GatherTimeout
from .execution import Execution
from .interceptors import run_tool
from .journal import Journal, Wait
from .llm.journaled import journaled_chat
from .llm.result import ChatResult

if TYPE_CHECKING:
    from .charging import Bill
    from .port import RuntimePort
    from .tool import Tool


class Suspend(BaseException):
    """Internal: the handler waits (gather / signal); its message is acked, the run parked."""

    def __init__(self, wait: Wait) -> None:
        super().__init__(wait)
        self.wait = wait


class HandoffDone(BaseException):
    """Internal: control passed to another agent; this handler is done."""

    def __init__(self, agent: str, task_id: str) -> None:
        super().__init__(agent)
        self.agent = agent
        self.task_id = task_id


@dataclass(frozen=True, slots=True)
class Handle:
    """A spawned child task; pass it to `ctx.gather`."""

    task_id: str
    agent: str


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the run, the agent and the journal step the handler is at.
    Quiet while the handler replays recorded steps: each line is written once, when its code
    first ran, not again on every redelivery or resume (as Temporal's workflow logger)."""

    def isEnabledFor(self, level: int) -> bool:
        ctx: Context = (self.extra or {})["ctx"]  # type: ignore[assignment]
        return not ctx.replaying and super().isEnabledFor(level)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        ctx: Context = (self.extra or {})["ctx"]  # type: ignore[assignment]
        return f"[run {ctx.run_id} {ctx.agent} step {ctx._exec.cursor}] {msg}", kwargs


class Context:
    """Per-task context: the run, who it acts for, and the journaled operations."""

    def __init__(self, worker: RuntimePort, execution: Execution, attempt: int) -> None:
        self._worker = worker
        self._exec = execution
        self.agent = worker.name
        self.envelope = execution.envelope
        self.attempt = attempt
        self._timer_due: dict[str, float] = {}
        self._tool_seq = -1  # the journal position of the tool call running now
        self._bill: Bill | None = None  # the charge of the tool call running now
        self.started = time.perf_counter()
        self.chain: ChainView | None = None
        self.log = RunLogger(logging.getLogger(f"relaybus.agent.{self.agent}"), {"ctx": self})

    def elapsed_ms(self) -> float:
        """Milliseconds since this execution of the handler began."""
        return (time.perf_counter() - self.started) * 1000

    # -- facts about the run ------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.envelope.run_id

    @property
    def task_id(self) -> str:
        return self.envelope.id

    @property
    def principal(self) -> str:
        """Who the run acts for: the user at the root of the delegation chain; without one (identity
        off), the user the run's first task carried on, else the sender."""
        if self.chain is not None:
            return self.chain.principal
        if self.envelope.chain:
            return decode_body(self.envelope.chain[0].payload).principal
        return self.envelope.user or self.envelope.sender

    async def audit(
        self,
        action: str,
        *,
        tool: str = "",
        reason: str = "",
        detail: dict[str, Any] | None = None,
        decision: Literal["allow", "deny"] = "allow",
    ) -> None:
        """Append a record with this run's verified chain to the audit stream (data tools record
        each query this way, payments each refusal). Without identity there is no chain and no
        audit."""
        gate = self._worker.gate
        if gate is None or self.chain is None:
            return
        await gate.audit(
            AuditRecord(
                action=action,
                decision=decision,
                principal=self.chain.principal,
                actor=f"agent:{self.agent}",
                reason=reason,
                run_id=self.run_id,
                tool=tool,
                chain=self.chain.ids,
                detail=detail or {},
            )
        )

    @property
    def memory(self) -> MemoryClient:
        """This run's long-term memory (the memory service takes the tenant from the chain)."""
        caller = Caller(
            run_id=self.run_id,
            agent=self.agent,
            principal=self.principal,
            chain=list(self.envelope.chain),
        )
        return MemoryClient(self._worker.bus, caller)

    def price(self, tool: Tool) -> int:
        """What one call of `tool` is charged in this process (0 without a ledger)."""
        return self._worker.costs.price(tool)

    @property
    def ledger(self) -> LedgerClient | None:
        """This agent process's ledger client (None while RELAYBUS_LEDGER is off): tools that
        move money (agents/tools/payments.py) hold and capture through it."""
        return self._worker.costs.ledger

    @property
    def settings(self) -> Settings:
        """The agent process's settings (where its SMTP server, LLM endpoint, ... are)."""
        return self._worker.bus.settings

    @property
    def trace_origin(self) -> str:
        """The traceparent of this task's first execution span ("" before it has one)."""
        return self._exec.journal.traceparent

    @trace_origin.setter
    def trace_origin(self, traceparent: str) -> None:
        self._exec.journal.traceparent = traceparent  # kept with the journal's next write

    @property
    def replaying(self) -> bool:
        """True while the handler is re-walking operations the journal already holds."""
        return self._exec.replaying

    # -- keys for effects ------------------------------------------------------------

    def idempotency_key(self, purpose: str) -> str:
        """A key for an external effect of the tool call now running (a payment, a message):
        the same on every retry and replay of this call, different for every other call."""
        return derived_id(self.task_id, purpose, str(self._tool_seq))

    def meter(self, units: float) -> None:
        """Report what the metered tool running now used (CPU seconds, ...): the ledger captures
        its price per unit times `units`, never more than it held for the call."""
        if self._bill is not None:
            self._bill.units = units

    @property
    def metered_units(self) -> float | None:
        """What the tool call running now reported with `meter` (None: nothing)."""
        return self._bill.units if self._bill is not None else None

    def charge_key(self, seq: int) -> str:
        """Names the ledger hold of step `seq`: the same across crashes and replays (an open
        hold is reused, never taken twice), a new one once the step's hold was voided."""
        voided = self._exec.journal.voids.get(seq, 0)
        return str(seq) if not voided else f"{seq}.{voided}"

    async def note_void(self, seq: int) -> None:
        """Record, before voiding, that step `seq`'s current hold is spent: a retry holds anew."""

        def bump(journal: Journal) -> None:
            journal.voids[seq] = journal.voids.get(seq, 0) + 1

        await self._exec.mutate(bump)

    # -- journaled operations -------------------------------------------------------------

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once per run: a replay returns the recorded result.

        The result must be JSON-serialisable; what you get back is its JSON round trip, on
        the first run and on replays alike. A step that raises is not recorded (it runs
        again when the task is retried)."""
        seq, op = self._exec.next("step", name)
        if op is not None:
            return self._exec.replay(op)
        await self._exec.flush()
        self._exec.ensure_held(f"step {name!r}")
        started = time.perf_counter()
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        body = encode_result(value)
        self._exec.timed(seq, (time.perf_counter() - started) * 1000)
        self._exec.record(seq, "step", name, body)
        await self._exec.flush()
        return msgspec.json.decode(body)

    async def tool(self, tool: Tool, arguments: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Call a `@tool` with validated arguments, journaled like a step."""
        given = {} if arguments is None else arguments
        if kwargs and isinstance(given, dict):
            given = {**given, **kwargs}
        args = tool.validate(given)  # anything but an object is refused there, naming it
        seq, op = self._exec.next("tool", tool.name)
        if op is not None:
            if op.settle:
                await self._exec.settle(seq, op.settle)
            return self._exec.replay(op)
        await self._exec.flush()
        try:
            await self._worker.authorize(self, tool, args)
        except PermissionDenied as exc:
            await self._journal_refusal(seq, tool, exc)
        breaker = self._worker.costs.breaker(tool)
        try:
            breaker.before()
        except CircuitOpen as exc:
            raise Retry(str(exc), delay_s=breaker.retry_after_s()) from None
        self._tool_seq = seq
        started = time.perf_counter()

        async def invoke() -> Any:
            self._exec.ensure_held(f"tool {tool.name!r}")  # after the hold and interceptors
            return await tool.invoke(self, args)

        try:
            async with self._worker.costs.charge(self, tool, seq, args) as bill:
                self._bill = bill
                try:
                    value = await run_tool(self._worker.interceptors, self, tool, args, invoke)
                except (DataRefused, PaymentRefused):
                    raise  # a refusal is the caller's mistake, not the tool failing
                except Exception:
                    breaker.failure()
                    raise
                breaker.success()
        except Exception as exc:
            await self._worker.emit_event(
                self.envelope,
                "step",
                detail=f"tool {tool.name}",
                latency_ms=(time.perf_counter() - started) * 1000,
                error=ErrorInfo.from_exception(exc),
            )
            if isinstance(exc, DataRefused | PaymentRefused):
                await self._journal_refusal(seq, tool, exc)
            raise
        self._exec.timed(seq, (time.perf_counter() - started) * 1000, bill.cost)
        body = encode_result(value)
        self._exec.record(seq, "tool", tool.name, body, settle=bill.pending)
        await self._exec.flush_and_settle(seq, bill.pending)
        return msgspec.json.decode(body)

    async def _journal_refusal(self, seq: int, tool: Tool, exc: RelayError) -> NoReturn:
        """Record a refused call as the call's outcome: a handler that catches the refusal and
        goes on replays along the same path (the refusal is raised again, not re-decided)."""
        self._exec.record(seq, "tool", tool.name, error=ErrorInfo.from_exception(exc))
        await self._exec.flush()
        raise exc

    async def llm(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int = 1024,
        temperature: float | None = None,
        tools: list[Tool] | None = None,
    ) -> ChatResult:
        """One chat completion from the configured OpenAI-compatible endpoint, journaled (a
        replay returns the recorded answer and never calls twice) and charged to the run's
        budgets from the reported token usage and the price table.

        With `tools`, the model may answer with `tool_calls`; `relaybus.agents.llm.use_tools` runs
        them through `ctx.tool` (and so through the authorization gate) and loops."""
        return await journaled_chat(
            self,
            self._worker,
            self._exec,
            messages,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            tools=tools,
        )

    def now(self) -> float:
        """Wall-clock time, recorded: a replay sees the same value."""
        seq, op = self._exec.next("now", "now")
        if op is not None:
            return float(self._exec.replay(op))
        value = time.time()
        self._exec.record(seq, "now", "now", msgspec.json.encode(value))
        return value

    def random(self) -> float:
        """A random float in [0, 1), recorded: a replay sees the same value."""
        seq, op = self._exec.next("random", "random")
        if op is not None:
            return float(self._exec.replay(op))
        value = _random.random()
        self._exec.record(seq, "random", "random", msgspec.json.encode(value))
        return value

    def spawn(self, agent: str, payload: Any, *, scopes: list[str] | None = None) -> Handle:
        """Start a child task on `agent`; its result comes back to this task. Use `gather`.
        `scopes` narrows what the child may do (default: everything this task may)."""
        seq, op = self._exec.next("spawn", agent)
        child_id = derived_id(self.task_id, "spawn", str(seq))
        if op is None:
            self._exec.publish_later(
                self._derive(child_id, agent, payload, seq, child=True), scopes
            )
            self._exec.record(seq, "spawn", agent, msgspec.json.encode(child_id))
        return Handle(task_id=child_id, agent=agent)

    async def call(self, agent: str, payload: Any, *, scopes: list[str] | None = None) -> Any:
        """Run a child task on `agent` and return its result (raises ChildFailed)."""
        (result,) = await self.gather(self.spawn(agent, payload, scopes=scopes))
        return result

    async def gather(
        self, *handles: Handle, quorum: int | None = None, timeout: float | None = None
    ) -> list[Any]:
        """Wait for children. Without `quorum`: all results, in order (ChildFailed if one failed).
        With `quorum=k`: as soon as k succeeded, results in order with None for the rest, whose
        tasks are cancelled. `timeout` seconds: GatherTimeout if not enough came in time."""
        ids = tuple(h.task_id for h in handles)
        if not ids and quorum is None:
            return []  # as asyncio.gather(): nothing to wait for (a fan-out over no items)
        need = quorum or len(ids)
        if not 0 < need <= len(ids):  # the handler's own mistake: the same on every attempt
            raise Reject(f"gather: quorum {quorum} is not between 1 and {len(ids)} children")
        timer = await self._timer("gather", timeout) if timeout is not None else ""
        seq, op = self._exec.next("gather", f"{need}/{len(ids)}")
        if op is not None:
            return list(self._exec.replay(op))
        await self._park(Wait(children=ids, quorum=quorum or 0, timer=timer))
        journal = self._exec.journal
        done = {c: journal.children[c] for c in ids if c in journal.children}
        tracing.link_fan_in(o.traceparent for o in done.values())
        ok = [c for c in ids if c in done and done[c].ok]
        failed = [done[c] for c in ids if c in done and not done[c].ok]
        error: RelayError | None = None
        if quorum is None and failed:
            error = ChildFailed(failed[0].error or ErrorInfo(type="Error", message="child failed"))
        elif len(ok) < need and failed and len(failed) > len(ids) - need:
            first = failed[0].error
            error = ChildFailed(
                ErrorInfo(
                    type="QuorumImpossible",
                    message=(
                        f"{len(failed)} of {len(ids)} children failed, quorum {need} cannot be met; first: "
                        f"{first.type if first else 'Error'}: {first.message if first else ''}"
                    ),
                )
            )
        elif len(ok) < need:
            error = GatherTimeout(
                ErrorInfo(
                    type="GatherTimeout",
                    message=(f"{len(ok)} of {need} needed results arrived within {timeout:g}s"),
                )
            )
        if error is not None:
            self._exec.record(
                seq, "gather", f"{need}/{len(ids)}", error=ErrorInfo.from_exception(error)
            )
            await self._exec.flush()
            raise error
        results = [msgspec.json.decode(done[c].result) if c in ok else None for c in ids]
        self._exec.record(seq, "gather", f"{need}/{len(ids)}", msgspec.json.encode(results))
        if quorum is not None:  # which children made the quorum is decided now, once
            await self._exec.flush()
        # all of them: written with the task's next write, as a replay until then finds every
        # outcome in the journal and gathers the same results again
        stragglers = [c for c in ids if c not in done]
        if stragglers:
            await self._worker.cancel_tasks(self.envelope, stragglers)
        return results

    async def handoff(
        self, agent: str, payload: Any, *, scopes: list[str] | None = None
    ) -> NoReturn:
        """Pass control to `agent`: the run continues there and this handler ends.
        `scopes` narrows what it may do (default: everything this task may)."""
        seq, op = self._exec.next("handoff", agent)
        child_id = derived_id(self.task_id, "handoff", str(seq))
        if op is None:
            self._exec.publish_later(
                self._derive(child_id, agent, payload, seq, child=False), scopes
            )
            self._exec.record(seq, "handoff", agent, msgspec.json.encode(child_id))
            await self._exec.flush()
        raise HandoffDone(agent, child_id)

    async def wait_signal(self, name: str, timeout: float | None = None) -> Any:
        """Wait durably for `relaybus approve RUN --signal NAME [--data JSON]`; returns the data.
        With `timeout` seconds, raises GatherTimeout when none came in time."""
        timer = await self._timer(f"signal:{name}", timeout) if timeout is not None else ""
        seq, op = self._exec.next("signal", name)
        if op is not None:
            return self._exec.replay(op)
        await self._exec.flush()
        if name not in self._exec.journal.signals:
            data = await self._worker.signal_or_register(self, name)
            if data is not None:
                arrived = data

                def keep(journal: Journal) -> None:
                    journal.signals.setdefault(name, arrived)

                await self._exec.mutate(keep)
        await self._park(Wait(signal=name, timer=timer))
        if name not in self._exec.journal.signals:
            error = GatherTimeout(
                ErrorInfo(type="SignalTimeout", message=f"no signal {name!r} within {timeout:g}s")
            )
            self._exec.record(seq, "signal", name, error=ErrorInfo.from_exception(error))
            await self._exec.flush()
            raise error
        body = self._exec.journal.signals[name]
        self._exec.record(seq, "signal", name, body)
        await self._exec.flush()
        return msgspec.json.decode(body)

    # -- helpers --------------------------------------------------------------------------

    async def _timer(self, label: str, timeout: float) -> str:
        """A journaled due time; returns the timer id that fires at it."""
        seq, op = self._exec.next("timer", label)
        if op is None:
            due = time.time() + timeout
            self._exec.record(seq, "timer", label, msgspec.json.encode(due))
        else:
            due = float(self._exec.replay(op))
        timer_id = derived_id(self.task_id, "timer", str(seq))
        self._timer_due[timer_id] = due
        return timer_id

    async def _park(self, wait: Wait) -> None:
        """Suspend unless what `wait` needs has arrived (checked against the latest journal),
        in the same write as what is pending (the children it waits for, a timer)."""
        journal = self._exec.journal
        if not self._exec.pending and journal.status == "running" and journal.waiting is None:
            if msgspec.structs.replace(journal, waiting=wait).satisfied():
                return  # arrived already (a resumed task replaying its wait): nothing to write
        parked = False

        def suspend(journal: Journal) -> None:
            nonlocal parked
            journal.waiting = wait
            parked = not journal.satisfied()
            journal.status = "suspended" if parked else "running"
            if not parked:
                journal.waiting = None

        await self._exec.flush(also=suspend)
        if parked:
            if wait.timer:
                await self._worker.start_timer(
                    self.envelope, wait.timer, self._timer_due[wait.timer]
                )
            raise Suspend(wait)

    def _derive(self, task_id: str, agent: str, payload: Any, seq: int, *, child: bool) -> Envelope:
        env = self.envelope
        return Envelope(
            id=task_id,
            run_id=env.run_id,
            kind="task",
            sender=self.agent,
            recipient=agent,
            payload=encode_result(payload),
            parent_id=self.task_id if child else env.parent_id,
            reply_to=self.agent if child else env.reply_to,
            chain=env.chain,
            hop=env.hop + 1,
            max_hops=env.max_hops,
            deadline=env.deadline,
            budget=env.budget,
            created_at=time.time(),
            steps=env.steps + seq + 1,
            max_steps=env.max_steps,
            trail=(*env.trail[-15:], self.agent),
            user="" if env.chain else env.user or env.sender,
        )
