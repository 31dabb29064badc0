"""`Execution`: one run of a task's handler against the task's journal.

The cursor walks the journal: an operation already recorded at a position is replayed, a new
one runs and is recorded. New operations and the child tasks they start are kept pending and
committed together (`flush`): publish first, then one CAS write fenced by the owner, so a crash
in between replays the operation and republishes the same deterministic envelope id, which
JetStream stores once. `Context` (the handler's API) and the worker (which ends the task) both
work through this object; neither reaches into the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from relaybus.bus import Envelope, ErrorInfo, RelayError
from relaybus.bus.lease import LEASE_MARGIN, Lease

from .charging import PendingCapture, RunSpend
from .errors import LimitExceeded, rebuild
from .journal import NOT_STORED, ClaimLost, Fenced, Journal, JournalDivergence, Op, release

if TYPE_CHECKING:
    from .port import RuntimePort

DEFAULT_MAX_STEPS = 1000
A = TypeVar("A")
B = TypeVar("B")


class Execution:
    def __init__(
        self,
        port: RuntimePort,
        envelope: Envelope,
        journal: Journal,
        revision: int,
        owner: str,
        lease: Lease | None = None,
        claim: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.port = port
        #: a woken task's claim (in `journal`, not stored yet): the first write stores it with
        #: what that write commits, then calls it (the `resumed` event)
        self.claim = claim
        self._unannounced: Callable[[], Awaitable[None]] | None = None
        #: whether its run (or it) was cancelled while it waited: the run's record, read while
        #: the handler replays up to its first write
        self._cancelled_meanwhile: asyncio.Task[bool] | None = None
        self.lease = lease or Lease()
        self.envelope = envelope
        self.journal = journal
        self.revision = revision
        self.owner = owner
        self.cursor = 0
        self.writes = 0  # journal writes this execution made
        self.run_spent: RunSpend | None = None  # the run's spend after this attempt's captures
        self._pending_ops: list[Op] = []
        self._pending_publish: list[tuple[Envelope, list[str] | None]] = []
        self._timings: dict[int, tuple[float, int]] = {}  # seq -> (latency ms, cost) for events
        self._settled: set[int] = set()  # ops whose capture went out, struck at the next write
        if claim is not None:
            self._read_cancel()

    @property
    def unstored(self) -> bool:
        """Whether this execution's hold on the task is not stored yet: a first delivery's
        journal, or a woken task's claim. The write that stores it is the fence before an
        effect, and reads the run's record beside it (for a cancel)."""
        return self.revision == NOT_STORED or self.claim is not None

    @property
    def replaying(self) -> bool:
        """True while the handler re-walks operations the journal already holds."""
        return self.cursor < len(self.journal.ops)

    def next(self, kind: str, name: str) -> tuple[int, Op | None]:
        """The next position, and the operation recorded there (None: run it, then `record`).
        Refuses a handler that asks for something else than it did before, and a new
        operation past the run's step limit or deadline."""
        seq = self.cursor
        self.cursor += 1
        ops = self.journal.ops
        env = self.envelope
        if seq < len(ops):
            op = ops[seq]
            if op.kind != kind or op.name != name:
                raise JournalDivergence(
                    f"step {seq} of task {env.id} ({self.port.name}) was {op.kind} {op.name!r} "
                    f"in the journal, but the handler now asks for {kind} {name!r}; handlers must "
                    "be deterministic: put clocks, randomness and I/O inside ctx.step"
                )
            return seq, op
        max_steps = env.max_steps or DEFAULT_MAX_STEPS
        if env.steps + seq + 1 > max_steps:
            raise LimitExceeded(f"step limit {max_steps} reached at {kind} {name!r}")
        if env.deadline and time.time() > env.deadline:
            raise LimitExceeded(f"deadline passed before {kind} {name!r}")
        return seq, None

    def ensure_held(self, what: str) -> None:
        """Stop (Fenced: neither ack nor nak) before work with an effect if this process may
        have lost its message: it stalled near the ack wait, so another replica may be running
        the same task from its journal, and the work would happen twice. The message comes
        back, and whoever takes it over replays what was journaled."""
        self.stop_if_cancelled()
        if not self.lease.held():
            env = self.envelope
            raise Fenced(
                f"task {env.id} of run {env.run_id} ({self.port.name}) stalled for over "
                f"{LEASE_MARGIN:.0%} of its ack wait before {what}; another replica may run "
                "it now, so this one stops and the message is taken over from its journal"
            )

    def stop_if_cancelled(self) -> None:
        """Stop (asyncio.CancelledError: the task ends cancelled) before more work once this
        process knows the run or the task was cancelled, however it learned it (a control
        message, the record read by the first write), even if an earlier stop was swallowed."""
        if self.port.known_cancelled(self.envelope):
            raise asyncio.CancelledError

    @staticmethod
    def replay(op: Op) -> Any:
        """A recorded operation's result again (or its error, raised again)."""
        if op.error is not None:
            raise rebuild(op.error)
        return msgspec.json.decode(op.result) if op.result else None

    def record(
        self,
        seq: int,
        kind: str,
        name: str,
        result: bytes = b"",
        error: ErrorInfo | None = None,
        settle: PendingCapture | None = None,
    ) -> None:
        owed = msgspec.json.encode(settle) if settle is not None else b""
        self._pending_ops.append(
            Op(seq=seq, kind=kind, name=name, result=result, error=error, settle=owed)
        )

    def timed(self, seq: int, latency_ms: float, cost: int = 0) -> None:
        """What the `step` event of operation `seq` reports once it is committed."""
        self._timings[seq] = (latency_ms, cost)

    @property
    def publishing(self) -> bool:
        """Whether child tasks or a handoff wait to be published (by the next `flush`)."""
        return bool(self._pending_publish)

    @property
    def pending(self) -> bool:
        return bool(self._pending_ops or self._pending_publish)

    def take_ops(self) -> list[Op]:
        """The ops recorded since the last write, for a write the caller makes (the task's end);
        only with nothing left to publish, which must go out before the ops naming it."""
        assert not self._pending_publish
        ops, self._pending_ops = self._pending_ops, []
        return ops

    def publish_later(self, env: Envelope, scopes: list[str] | None) -> None:
        """Publish `env` (a child task or handoff, delegated `scopes`) with the next flush."""
        self._pending_publish.append((env, scopes))

    async def flush(self, also: Callable[[Journal], None] | None = None) -> None:
        """Publish pending child tasks and handoffs, then commit pending ops in one CAS write;
        `also` changes the journal in that same write (a wait parked with the ops before it)."""
        if not self._pending_publish:
            await self._flush(also)
            return
        # children go out before the write that records them: one that answers first finds
        # the write on its way here (its outcome waits for it rather than re-reading)
        async with self.port.journals.writing(self.envelope.run_id, self.envelope.id):
            await self._flush(also)

    async def _flush(self, also: Callable[[Journal], None] | None) -> None:
        port = self.port
        self.stop_if_cancelled()
        if self.unstored and self._pending_publish:
            # stored first: a duplicate of a task that runs elsewhere is fenced off here,
            # before it publishes anything (its children could carry another payload)
            await self.mutate(lambda journal: None, first=True)
        if self._pending_publish:
            batch, self._pending_publish = self._pending_publish, []
            delegated = [await port.delegate(env, scopes) for env, scopes in batch]
            await port.started_out(self.envelope)  # stored before anything of what it creates
            await asyncio.gather(*(port.bus.publish(env) for env in delegated))
            for env in delegated:
                if env.parent_id == self.envelope.id:
                    await port.emit_event(
                        self.envelope, "call", recipient=env.recipient, child_id=env.id
                    )
        if self._pending_ops or also is not None or self.unstored:
            # (not stored yet: the write that stores it is the fence before an effect)
            ops, self._pending_ops = self._pending_ops, []

            def append(journal: Journal) -> None:
                have = len(journal.ops)
                journal.ops.extend(op for op in ops if op.seq >= have)
                if also is not None:
                    also(journal)

            await self.mutate(append, first=self.unstored)
            for op in ops:
                if op.kind in ("step", "tool") and op.error is None:
                    latency_ms, cost = self._timings.pop(op.seq, (0.0, 0))
                    await port.emit_event(
                        self.envelope,
                        "step",
                        detail=f"{op.kind} {op.name}",
                        latency_ms=latency_ms,
                        cost=cost,
                    )

    async def mutate(
        self, change: Callable[[Journal], None], *, first: bool = False, announce: bool = True
    ) -> Journal:
        """Apply `change` to the journal with CAS, as its owner (Fenced once taken over);
        captures sent since the last write are struck from it in the same write. `first`: the
        write that stores the journal or a woken task's claim, before the task's next effect
        or child, which also reads the run's record: a task whose run (or itself) was
        cancelled meanwhile stops there (asyncio.CancelledError, ended as cancelled), with
        nothing more done. (A woken task's record was read while it replayed: a cancel stops
        it before this write.) A woken task's claim that meets a journal moved since it was
        read is lost (`ClaimLost`): the outcome that woke it is merged again. `announce`: say
        the task resumed once the claim is stored (else `announce_resumed` says it later)."""
        claim = self.claim
        if claim is not None:
            if not self.lease.held():  # the redelivery of what woke it is another's by now
                raise Fenced(
                    f"task {self.envelope.id} of run {self.envelope.run_id} stalled for over "
                    f"{LEASE_MARGIN:.0%} of its ack wait before it stored its wake-up"
                )
            if first:
                try:
                    cancelled_meanwhile = await self.cancelled_while_waiting()
                except RelayError as exc:  # no verdict: what woke it is merged again
                    raise ClaimLost(f"the run's record could not be read: {exc}") from None
                if cancelled_meanwhile:
                    raise asyncio.CancelledError  # nothing stored: `_finish` ends it cancelled
        settled, self._settled = self._settled, set()

        def change_and_strike(journal: Journal) -> None:
            change(journal)
            for i, op in enumerate(journal.ops):
                if op.seq in settled and op.settle:
                    journal.ops[i] = msgspec.structs.replace(op, settle=b"")

        self.writes += 1
        write = self.port.journals.mutate(
            self.envelope.run_id,
            self.envelope.id,
            change_and_strike,
            owner=self.owner,
            current=(self.journal, self.revision),
        )
        try:
            if first and self.revision == NOT_STORED:
                (self.journal, self.revision), cancelled = await both(
                    write, self.port.cancelled_before_start(self.envelope)
                )
            else:
                (self.journal, self.revision), cancelled = await write, False
        except Fenced as exc:
            if claim is None or isinstance(exc, ClaimLost):
                raise
            raise ClaimLost(str(exc)) from None
        if claim is not None:  # stored by this write
            self.claim, self._unannounced = None, claim
            if announce:
                await self.announce_resumed()
        if cancelled:
            raise asyncio.CancelledError
        return self.journal

    async def announce_resumed(self) -> None:
        """Say the woken task resumed, once its claim is stored (once)."""
        announce, self._unannounced = self._unannounced, None
        if announce is not None:
            await announce()

    async def cancelled_while_waiting(self) -> bool:
        """For a woken task: whether its run (or it) was cancelled while it waited, from the
        run's record (read once, while the handler replays up to its first write; a read that
        failed is made again, and its error raised if that fails too)."""
        if self.port.known_cancelled(self.envelope):
            return True
        reading = self._cancelled_meanwhile
        if reading is None:
            return False
        if _failed(reading):
            reading = self._read_cancel()
        # shielded: the handler cancelled meanwhile (a cancel message) leaves the read alone
        return await asyncio.shield(reading)

    def cancel_known(self) -> bool | None:
        """For a woken task: the verdict on a cancel while it waited, if it is in (None if
        the read is still on its way, or failed)."""
        if self.port.known_cancelled(self.envelope):
            return True
        reading = self._cancelled_meanwhile
        if reading is None:
            return False
        if not reading.done() or _failed(reading):
            return None
        return reading.result()

    def _read_cancel(self) -> asyncio.Task[bool]:
        reading = asyncio.ensure_future(self.port.cancelled_before_start(self.envelope))
        reading.add_done_callback(_retrieved)
        self._cancelled_meanwhile = reading
        return reading

    def close(self) -> None:
        """The execution is over: a read it no longer needs is not left running."""
        if self._cancelled_meanwhile is not None and not self._cancelled_meanwhile.done():
            self._cancelled_meanwhile.cancel()

    async def release(self) -> None:
        """A failed attempt lets go of its task: the next delivery is a retry, not a takeover.
        A claim not stored yet has nothing to let go of: the journal still waits, and the
        redelivery of what woke it claims it again."""
        if self.claim is None:
            await self.mutate(release)

    async def flush_and_settle(self, seq: int, owed: PendingCapture | None) -> None:
        """Commit what is pending, then send op `seq`'s capture. Not at the same time: a capture
        that landed for a call whose journal write did not would meet, on replay, a call run
        again under the same hold (an LLM call's other token count is refused as another body;
        a failing rerun's void is refused and the retry holds and captures anew)."""
        await self.flush()
        if owed is not None:
            await self.settle(seq, owed)

    async def settle(self, seq: int, owed: PendingCapture | bytes) -> None:
        """Send the capture journaled with op `seq`; the journal's next write strikes it. A
        crash before that write sends it again on replay, under the same operation id, which
        the ledger answers with its first result (no second capture)."""
        if isinstance(owed, bytes):
            owed = msgspec.json.decode(owed, type=PendingCapture)
        spent = await self.port.costs.capture(owed)
        if spent is not None:
            self.run_spent = spent.later(self.run_spent)
        self._settled.add(seq)


def _failed(task: asyncio.Task[bool]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _retrieved(task: asyncio.Task[bool]) -> None:
    if not task.cancelled():
        task.exception()  # an execution that stopped first never asks: not an unhandled error


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await both at once; both finish before the first error (if any) is raised."""
    a, b = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in (a, b):
        if isinstance(outcome, BaseException):
            raise outcome
    return a, b  # type: ignore[return-value]
