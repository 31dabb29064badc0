"""The durable execution journal: one record per task of a run, in JetStream KV, written
with compare-and-set so a run's state never forks.

The owner (the replica executing the handler) appends operations; anyone may merge child
outcomes, signals and fired timers. A write by an owner that was replaced fails with
`Fenced`: a stalled replica that wakes up after another took over cannot commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Literal

import msgspec

from relaybus.bus import ErrorInfo, RelayError
from relaybus.bus.kv import Bucket, RevisionConflict
from relaybus.bus.recent import Recent

Status = Literal["running", "suspended", "completed", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
MAX_CAS_RETRIES = 100
NOT_STORED = 0  # the revision of a journal not written yet: its first write creates it
RECENT_JOURNALS = 4096  # journals a process remembers as it last read or wrote them


class Fenced(RelayError):
    """Another replica took this task over; this one must stop without committing."""


class ClaimLost(Fenced):
    """A woken task's claim, not stored yet, met a journal that moved since it was read (another
    outcome merged, another replica woke it): the outcome that woke it is merged again."""


class JournalDivergence(RelayError):
    """The handler asked for a different operation than the journal recorded at this step."""


class Op(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One journaled operation and its recorded outcome (JSON)."""

    seq: int
    kind: str
    name: str
    result: bytes = b""
    error: ErrorInfo | None = None
    settle: bytes = b""  # a ledger capture still owed for this op (JSON), cleared once captured


class Outcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How a child task ended, as recorded in its parent's journal."""

    ok: bool
    result: bytes = b""
    error: ErrorInfo | None = None
    traceparent: str = ""  # the child's span, linked from the parent's resumed span


class Wait(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a suspended task waits for."""

    children: tuple[str, ...] = ()
    quorum: int = 0
    signal: str = ""
    timer: str = ""


# JSON results are kept as plain bytes here: the journal itself is msgpack.
class Journal(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    task_id: str
    agent: str
    task: bytes
    status: Status = "running"
    owner: str = ""
    driver: str = ""  # the delivery that runs it: `<stream>:<sequence>` (see `driver_of`)
    ops: list[Op] = []
    children: dict[str, Outcome] = {}
    signals: dict[str, bytes] = {}
    timers: list[str] = []
    waiting: Wait | None = None
    result: bytes = b""
    error: ErrorInfo | None = None
    handoff: str = ""
    #: W3C traceparent of this task's first execution span: later executions (resumed by a
    #: child, a signal or a timer; retried) are its children, linked to what woke them
    traceparent: str = ""
    voids: dict[int, int] = {}  # seq -> holds voided for that step (the next hold is a new one)

    def satisfied(self) -> bool:
        """Whether what this task waits for has arrived."""
        wait = self.waiting
        if wait is None:
            return True
        if wait.timer and wait.timer in self.timers:
            return True
        if wait.signal:
            return wait.signal in self.signals
        if wait.timer and not wait.children:  # a timer alone, not fired yet
            return False
        done = [c for c in wait.children if c in self.children]
        if wait.quorum:
            ok = sum(1 for c in done if self.children[c].ok)
            failed = len(done) - ok
            return ok >= wait.quorum or failed > len(wait.children) - wait.quorum
        return len(done) == len(wait.children)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Journal).decode


class _OnItsWay:
    __slots__ = ("done", "saying")

    def __init__(self) -> None:
        self.done = asyncio.Event()  # set once every write said to be on its way is done
        self.saying = 0


class JournalStore:
    """One agent's journals, in the `<prefix>_journal` bucket, keyed `<run>.<task>.<agent>`:
    the agent's name last, so its NATS user may write only its own keys."""

    def __init__(self, bucket: Bucket, agent: str, remember: int = RECENT_JOURNALS) -> None:
        self.bucket = bucket
        self.agent = agent
        self._recent: Recent[str, tuple[bytes, int]] = Recent(remember)
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, holders+waiters)
        self._on_its_way: dict[str, _OnItsWay] = {}  # key -> the writes said to be on their way

    def key(self, run_id: str, task_id: str) -> str:
        return f"{run_id}.{task_id}.{self.agent}"

    @contextlib.asynccontextmanager
    async def writing(self, run_id: str, task_id: str) -> AsyncIterator[None]:
        """Say that this process is about to write the journal (a task publishing its children,
        then parking its wait): an outcome of one of them that comes back first waits for that
        write (`written_here`) instead of reading the journal again and again."""
        written = self.on_its_way(run_id, task_id)
        try:
            yield
        finally:
            written()

    def on_its_way(self, run_id: str, task_id: str) -> Callable[[], None]:
        """Say that a write of this journal is on its way until the function returned is called
        (once or more). Said again meanwhile (a woken task's claim, then its flush publishing
        children), the journal is written once every one of them is done."""
        key = self.key(run_id, task_id)
        marker = self._on_its_way.get(key)
        if marker is None:
            marker = self._on_its_way[key] = _OnItsWay()
        marker.saying += 1
        said = True

        def written() -> None:
            nonlocal said
            if not said:
                return
            said = False
            marker.saying -= 1
            if marker.saying == 0:
                if self._on_its_way.get(key) is marker:
                    del self._on_its_way[key]
                marker.done.set()

        return written

    async def written_here(self, run_id: str, task_id: str, within_s: float) -> bool:
        """Wait (at most `within_s`) for a write this process said is on its way; whether
        there was one (`recent` then holds what it wrote, if it succeeded). One that takes
        longer is forgotten: later outcomes do not wait for it again."""
        key = self.key(run_id, task_id)
        marker = self._on_its_way.get(key)
        if marker is None:
            return False
        try:
            async with asyncio.timeout(within_s):
                await marker.done.wait()
        except TimeoutError:
            if self._on_its_way.get(key) is marker:
                del self._on_its_way[key]
        return True

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, run_id: str, task_id: str) -> AsyncIterator[None]:
        """Take turns, in this process, at changing one journal: a turn starts from the copy
        the turn before wrote (`recent`), so its CAS write lands the first time. Without it,
        children's outcomes arriving together raced for their parent's journal, and all but
        one lost each round: eight children cost 36 writes and 44 reads instead of 8 writes."""
        key = self.key(run_id, task_id)
        lock, users = self._turns.get(key) or (asyncio.Lock(), 0)
        self._turns[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._turns[key]
            if users <= 1:
                del self._turns[key]
            else:
                self._turns[key] = (lock, users - 1)

    async def load(self, run_id: str, task_id: str) -> tuple[Journal, int] | None:
        key = self.key(run_id, task_id)
        found = await self.bucket.get(key)
        if found is None:
            return None
        self._recent.set(key, found)
        return _decode(found[0]), found[1]

    def recent(self, run_id: str, task_id: str) -> tuple[Journal, int] | None:
        """A copy of the journal as this process last read or wrote it, or None. Possibly
        stale: only good as the `current` of a CAS write (which a stale copy fails, and
        `mutate` then reads), never for a decision made without writing."""
        kept = self._recent.get(self.key(run_id, task_id))
        return None if kept is None else (_decode(kept[0]), kept[1])

    async def create(self, journal: Journal) -> int:
        key, data = self.key(journal.run_id, journal.task_id), _encode(journal)
        revision = await self.bucket.create(key, data)
        self._recent.set(key, (data, revision))
        return revision

    async def write(self, journal: Journal, revision: int) -> int:
        """One CAS write of `journal` as it is; RevisionConflict if it moved (or, at revision
        NOT_STORED, if another execution stored it first)."""
        key, data = self.key(journal.run_id, journal.task_id), _encode(journal)
        if revision == NOT_STORED:
            written = await self.bucket.create(key, data)
        else:
            written = await self.bucket.update(key, data, revision)
        self._recent.set(key, (data, written))
        return written

    async def mutate(
        self,
        run_id: str,
        task_id: str,
        change: Callable[[Journal], None],
        *,
        owner: str | None = None,
        current: tuple[Journal, int] | None = None,
    ) -> tuple[Journal, int]:
        """Apply `change` and write it with CAS, re-reading and re-applying on conflict.

        `change` must be idempotent. With `owner`, the write is refused (Fenced) as soon as
        the journal names another owner.
        """
        for _ in range(MAX_CAS_RETRIES):
            if current is None:
                current = await self.load(run_id, task_id)
                if current is None:
                    raise RelayError(f"no journal for task {task_id} of run {run_id}")
            journal, revision = current
            if owner is not None and journal.owner != owner:
                raise Fenced(f"task {task_id} of run {run_id} was taken over by {journal.owner}")
            change(journal)
            try:
                return journal, await self.write(journal, revision)
            except RevisionConflict:
                current = None
        raise RelayError(f"journal of task {task_id} kept changing under {MAX_CAS_RETRIES} writes")


def driver_of(stream: str, sequence: int) -> str:
    """Names the delivery that drives a task. Qualified by stream: a timer's sequence and a
    task message's count in different streams, and the same number must not pass for a
    redelivery of the other (it would take over a task another replica is running)."""
    return f"{stream}:{sequence}"


def drives(journal: Journal, stream: str, sequence: int) -> bool:
    """Whether the delivery is (a redelivery of) the one driving the journal's task. A bare
    sequence, as journals written before drivers named their stream have, matches as it
    did then, on either stream (a timer's redelivery must still take its task over)."""
    if ":" not in journal.driver:
        return journal.driver == str(sequence)
    return journal.driver == driver_of(stream, sequence)


def claim(journal: Journal, owner: str, driver: str) -> bool:
    """Take a waiting task whose wait is complete for `owner`, driven by delivery `driver`;
    whether it was taken (in memory: the caller writes it)."""
    if journal.status != "suspended" or not journal.satisfied():
        return False
    journal.status, journal.owner, journal.driver, journal.waiting = "running", owner, driver, None
    return True


def copied(journal: Journal) -> Journal:
    """A copy of `journal` of its own."""
    return _decode(_encode(journal))


def release(journal: Journal) -> None:
    """A failed attempt lets go of its task: the next delivery is a retry, not a takeover."""
    journal.owner = ""
