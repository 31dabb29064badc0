"""The single writer of a ledger partition (server.py runs it as `relaybus service ledger`).

Its journal is the `RELAY_LEDGER` stream, subject `<prefix>.ledger.entry.<partition>`. Every
write is fenced with `Nats-Expected-Last-Subject-Sequence`, so a second writer on the same
partition is refused at its first write. A reply is sent only after the entry is stored; on
an append error the writer stops (its supervisor restarts it) and rebuilds from the journal.

The ledger's clock is this process's (`clock`, injectable for tests), never a request's. A
request refused at the trust boundary (a time on the wire, an operator's operation or field on
an agent's subject, an unknown operation) is audited under the principal `ledger`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from relaybus.bus import (
    Bus,
    PermissionDenied,
    PublishFailed,
    RelayError,
    metrics,
    tracing,
)
from relaybus.bus.errors import ErrorInfo
from relaybus.bus.events import Event
from relaybus.bus.kv import RevisionConflict
from relaybus.bus.rpc import Reply, answer
from relaybus.bus.streams import read_subject
from relaybus.services.identity.client import publish_audit
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.ledger.errors import BudgetExceeded, LedgerError, RateLimited
from relaybus.services.ledger.settings import LedgerSettings

from .commit import GroupCommit
from .messages import WRITES, decode_batch, decode_request
from .model import Entry, HeldTransfer, State, apply, decide
from .ops import Capture, Hold, Op
from .partitions import names, refusal
from .queries import QUERIES
from .snapshots import SnapshotStore
from .spikes import SpendSpikes

log = logging.getLogger("relaybus.ledger")
LAYOUT_KEY = "layout"  # the ledger's partition count, in its snapshots bucket
_encode = msgspec.msgpack.Encoder().encode
_decode_entries = msgspec.msgpack.Decoder(Entry | list[Entry]).decode  # one, or a group commit
_decode_query = msgspec.json.Decoder(dict[str, str | None]).decode
_json = msgspec.json.Encoder().encode


class Snapshot(msgspec.Struct):
    seq: int
    state: State


AUDITED_PER_BATCH = 8


class WriterFenced(RelayError):
    """Another writer appended to this partition: this one must stop."""


class LedgerWriter:
    def __init__(
        self,
        bus: Bus,
        partition: str = "p0",
        snapshot_every: int = 5000,
        clock: Callable[[], float] = time.time,
        partitions: int | None = None,
    ) -> None:
        self.bus = bus
        self.clock = clock  # the ledger's only source of time
        self.partitions = partitions or LedgerSettings.of(bus.settings).ledger_partitions
        if partition not in names(self.partitions):
            raise LedgerError(
                f"ledger partition {partition!r} is not one of the {self.partitions} partitions "
                f"{', '.join(names(self.partitions))} (RELAYBUS_LEDGER_PARTITIONS)"
            )
        self.partition = partition
        self.subject = bus.subjects.ledger_entry(partition)
        self.stream = bus.subjects.stream("LEDGER")
        self.state = State(timezone=LedgerSettings.of(bus.settings).ledger_timezone)
        self.last_seq = 0
        self._tail = 0
        self._spikes = SpendSpikes(LedgerSettings.of(bus.settings).ledger_spike)
        self._since_snapshot = 0
        self.snapshot_every = snapshot_every
        self._clock_warned = 0.0
        self.failed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._commits = GroupCommit(self._append)
        self._incarnation = secrets.token_hex(6)
        self._snapshots: SnapshotStore | None = None

    async def _snapshot_store(self) -> SnapshotStore:
        if self._snapshots is None:
            self._snapshots = await SnapshotStore.open(self.bus, self.partition)
        return self._snapshots

    async def check_layout(self) -> None:
        """Refuse to start with a partition count other than the ledger's: a level's partition
        is a hash of its name, so another count would find budgets and holds missing where it
        looks. The first writer of a ledger records its count (a journal from before partitions
        had one); the bucket `relay_ledger_snapshots` keeps it under `layout`."""
        store = await self._snapshot_store()
        found = await store.bucket.get(LAYOUT_KEY)
        if found is None:
            info = await self.bus.js.stream_info(self.stream)
            count = 1 if info.state.messages else self.partitions
            try:
                await store.bucket.create(LAYOUT_KEY, str(count).encode())
            except RevisionConflict:
                pass  # another partition's writer recorded it first: read theirs
            found = await store.bucket.get(LAYOUT_KEY)
        recorded = int(found[0]) if found is not None else self.partitions
        if recorded != self.partitions:
            raise LedgerError(
                f"this ledger has {recorded} partition(s), but RELAYBUS_LEDGER_PARTITIONS is "
                f"{self.partitions}: set it to {recorded} for every writer and client (a level's "
                "partition is a hash of its name, so the count cannot change under a ledger)"
            )

    async def rebuild(self) -> int:
        """State = the latest snapshot, then the journal entries after it, applied in order."""
        self.state = State(timezone=LedgerSettings.of(self.bus.settings).ledger_timezone)
        self.last_seq = 0
        found = await (await self._snapshot_store()).load()
        if found is not None:
            snapshot = msgspec.msgpack.decode(found, type=Snapshot)
            self.state, self.last_seq = snapshot.state, snapshot.seq
            self.state.timezone = LedgerSettings.of(self.bus.settings).ledger_timezone
        replayed = 0
        for seq, data in await read_subject(
            self.bus, self.stream, self.subject, after=self.last_seq
        ):
            decoded = _decode_entries(data)
            for entry in decoded if isinstance(decoded, list) else [decoded]:
                apply(self.state, entry)
                replayed += 1
            self.last_seq = seq
        self._tail = self.last_seq
        self._since_snapshot = replayed  # a restart's replay counts toward the next snapshot
        return replayed

    async def handle(self, subject: str, data: bytes) -> bytes:
        tokens = subject.rsplit(".", 2)
        op_name = tokens[1] if tokens[-1] == self.partition else tokens[-1]

        async def work() -> Any:
            if op_name in QUERIES:
                return QUERIES[op_name](self.state, _decode_query(data or b"{}"))
            if op_name == "batch":
                return await self.write_batch(data)
            try:
                if op_name not in WRITES:
                    raise LedgerError(
                        f"unknown ledger operation {op_name!r}; the operations are "
                        f"{', '.join(WRITES)} and the queries {', '.join(QUERIES)}"
                    )
                op = decode_request(op_name, data)
            except RelayError as exc:
                await self._audit(op_name, exc)
                raise
            try:
                return await self.write(op)
            except PermissionDenied as exc:
                await self._audit(op_name, exc, op)
                raise

        return await answer(work, "ledger", LedgerError)

    async def write(self, op: Op) -> dict[str, object]:
        """Decide, append (fenced), reply once stored."""
        outcome = (await self.write_many([op]))[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def write_batch(self, data: bytes) -> list[Reply]:
        """`ledger.batch`: agents' holds, captures and voids sent together (the client batches
        what its tasks ask at once). Each is checked and decided as if sent alone, refusals
        included, and answered in a SERVER span of its own task's trace; one reply lists each
        one's outcome once all of them are stored."""
        items = decode_batch(data)
        ops: list[Op] = []
        spans = []
        refused: list[tuple[str, RelayError, Op | None]] = []
        for item, traceparent in items:
            span = _op_span(item, traceparent)
            spans.append(span)
            if isinstance(item, RelayError):
                refused.append(("batch", item, None))
            else:
                ops.append(item)
        try:
            decided = iter(await self.write_many(ops))
        except BaseException as exc:
            for span in spans:
                if span is not None:
                    span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
                    span.end()
            raise
        replies = []
        for (item, _), span in zip(items, spans, strict=True):
            outcome = item if isinstance(item, RelayError) else next(decided)
            if isinstance(outcome, PermissionDenied) and not isinstance(item, RelayError):
                refused.append((item.kind, outcome, item))
            if span is not None:
                if isinstance(outcome, BaseException):
                    span.set_status(Status(StatusCode.ERROR, f"{type(outcome).__name__}"))
                span.end()
            replies.append(
                Reply(ok=False, error=ErrorInfo.from_exception(outcome))
                if isinstance(outcome, BaseException)
                else Reply(ok=True, body=msgspec.Raw(_json(outcome)))
            )
        await self._audit_refusals(refused)
        return replies

    async def _audit_refusals(self, refused: list[tuple[str, RelayError, Op | None]]) -> None:
        """A batch's refusals: the first few one record each, the rest one record counting
        them (a hand-made batch of a thousand bad items costs the audit stream a few records)."""
        # denials first: they name the op and run an operator looks for; padding the batch with
        # malformed items cannot push them into the summary
        refused.sort(key=lambda item: not isinstance(item[1], PermissionDenied))
        for op_name, exc, op in refused[:AUDITED_PER_BATCH]:
            await self._audit(op_name, exc, op)
        more = refused[AUDITED_PER_BATCH:]
        if more:
            kinds = sorted({type(exc).__name__ for _, exc, _ in more})
            await self._audit(
                "batch",
                LedgerError(
                    f"{len(more)} more operations of this batch were refused ({', '.join(kinds)}); "
                    "the reply names each one's reason"
                ),
            )

    async def write_many(self, ops: list[Op]) -> list[dict[str, object] | RelayError]:
        """Decide each op in order against the state as the ops before it left it, apply it at
        once, and reply only when the journal has stored it: decisions made while an append is
        in flight go out together in the next one (group commit), so the journal takes one
        append per batch, not per decision. A refusal is that op's outcome; the others go on.

        If an append fails, it and every later one fail (their fence no longer holds), this
        writer stops, and its successor rebuilds from what was actually stored: no reply ever
        rests on an entry that was not."""
        outcomes: list[dict[str, object] | RelayError] = []
        entries: list[Entry] = []
        async with self._lock:
            if self.failed.is_set():
                raise LedgerError("this ledger writer stopped after an append error; retry shortly")
            now = self.clock()
            if now < self.state.clock - 1.0 and now - self._clock_warned > 60.0:
                self._clock_warned = now
                log.warning(
                    "this host's clock is %.1fs behind the ledger clock; decisions keep the "
                    "ledger clock until it catches up",
                    self.state.clock - now,
                )
            for op in ops:
                misrouted = refusal(op, self.partition, self.partitions)
                if misrouted is not None:
                    outcomes.append(misrouted)
                    continue
                try:
                    decided = decide(self.state, op, now)
                except (BudgetExceeded, RateLimited) as exc:
                    reason = "rate_limited" if isinstance(exc, RateLimited) else "budget"
                    metrics.BUDGET_DENIALS.add(1, {"reason": reason, **_allocation(op)})
                    outcomes.append(exc)
                    continue
                except RelayError as exc:
                    outcomes.append(exc)
                    continue
                if not isinstance(decided, Entry):
                    outcomes.append(decided)  # the same id and body: the first result
                    continue
                outcomes.append(apply(self.state, decided))
                entries.append(decided)
                if isinstance(op, Hold):
                    metrics.BUDGET_HOLDS.add(1, _allocation(op))
                elif isinstance(op, Capture) and op.amount:
                    metrics.SPENT.add(op.amount, _allocation(self.state.holds[op.transfer]))
            # a repeated op's first result may still be on its way to the journal: wait for it
            stored = self._commits.enqueue(entries) if entries else self._commits.barrier()
        await asyncio.shield(stored)  # a caller cancelled meanwhile leaves the others waiting
        for entry in entries:
            if isinstance(entry.op, Capture):
                await self._watch_spend(entry.op, entry.clock)
        if self._snapshot_due():
            await self.snapshot(only_if_due=True)
        return outcomes

    async def _append(self, entries: list[Entry]) -> None:
        """The journal appends of one group commit (the committer calls it, one at a time):
        one fenced publish, or several in order if the entries would not fit one message.
        Any failure stops this writer (its state is ahead of what the journal holds)."""
        try:
            body = _encode(entries[0] if len(entries) == 1 else entries)
            if len(body) > self.bus.settings.max_payload_bytes * 3 // 4 and len(entries) > 1:
                half = len(entries) // 2
                await self._append(entries[:half])
                await self._append(entries[half:])
                return
            await self._publish_fenced(body)
        except BaseException:
            self.failed.set()
            raise
        self._since_snapshot += len(entries)

    async def _publish_fenced(self, body: bytes) -> None:
        # the stream sequence of this partition's last entry: the partitions share the stream,
        # so the next entry's sequence is only known to be later
        expected = self._tail
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(expected),
            # this writer's incarnation in the id: a resend of its own append is deduplicated,
            # another writer's append after the same entry never is (it meets the fence instead)
            "Nats-Msg-Id": f"ledger:{self.partition}:{self._incarnation}:{expected}",
        }
        try:
            seq = await self.bus.publish_bytes(self.subject, body, headers)
        except PublishFailed as exc:
            if "last sequence" in str(exc).lower():
                raise WriterFenced(
                    f"another ledger writer owns partition {self.partition}; this one stops"
                ) from exc
            raise LedgerError(f"the ledger journal did not store the entry: {exc}") from exc
        if seq <= expected:
            raise LedgerError(f"the ledger journal diverged at sequence {seq}; the writer restarts")
        self._tail = seq
        self.last_seq = max(self.last_seq, seq)

    async def _audit(self, op_name: str, exc: BaseException, op: Op | None = None) -> None:
        """Record a refusal at the trust boundary (best effort: the reply goes out regardless)."""
        log.warning("ledger refused a %s request: %s", op_name, exc)
        record = AuditRecord(
            action=f"ledger/{op_name}",
            decision="deny",
            principal="ledger",
            actor="connection",
            reason=f"{type(exc).__name__}: {exc}",
            run_id=_tags(op).get("run", "") if op is not None else "",
            detail={"op_id": op.id} if op is not None else {},
        )
        try:
            await publish_audit(self.bus, record)
        except RelayError as failed:
            log.warning("could not audit the refusal: %s", failed)

    def _snapshot_due(self) -> bool:
        """Every `snapshot_every` entries, or a quarter of the entries so far if that is more:
        a snapshot holds the whole state, so a fixed cadence would cost the writer more with
        every one (O(n²)); this keeps its cost per entry constant and a restart's replay at
        most a fifth of the journal."""
        due = max(self.snapshot_every, len(self.state.history) // 4)
        return self._since_snapshot >= due

    async def snapshot(self, *, only_if_due: bool = False) -> None:
        """Store the state as of the last acknowledged entry, so a restart replays only what
        came after (snapshots.py keeps it in chunks, whatever its size). Taken under the write
        lock."""
        async with self._lock:
            if only_if_due and not self._snapshot_due():
                return  # the callers of one group commit ask together: one of them takes it
            # nothing is decided meanwhile: once what is queued is stored, state == journal
            try:
                await asyncio.shield(self._commits.barrier())
            except Exception:  # the writer failed: its successor takes the snapshots
                return
            if self.failed.is_set():
                return
            seq, raw = (
                self.last_seq,
                msgspec.msgpack.encode(Snapshot(seq=self.last_seq, state=self.state)),
            )
            self._since_snapshot = 0
        await (await self._snapshot_store()).store(seq, raw)

    async def _watch_spend(self, capture: Capture, at: float) -> None:
        """An `alert` event and a log line when this capture makes its payer's spend spike
        (RELAYBUS_LEDGER_SPIKE times its usual minute: spikes.py)."""
        hold = self.state.holds.get(capture.transfer)
        if hold is None:
            return
        spike = self._spikes.captured(hold.payer, capture.amount, at)
        if spike is None:
            return
        detail, recent = spike
        log.warning("%s", detail)
        run_id = hold.tags.get("run", "ledger")
        event = Event(run_id=run_id, kind="alert", detail=detail, cost=recent)
        await self.bus.publish_event(event, durable=True)


def _op_span(item: Op | RelayError, traceparent: str) -> Span | None:
    """The SERVER span of one batched operation, in the trace of the task that asked (none for
    an untraced one), named as a request on the operation's own subject would be."""
    if not traceparent:
        return None
    parent = tracing.extract({"traceparent": traceparent})
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return None
    method = item.kind if not isinstance(item, RelayError) else "batch"
    return tracing.TRACER.start_span(
        f"relaybus-ledger {method}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "nats", "rpc.service": "relaybus-ledger", "rpc.method": method},
    )


def _tags(op: Op) -> dict[str, str]:
    tags: dict[str, str] = getattr(op, "tags", {})
    return tags


def _allocation(op: Op | HeldTransfer) -> dict[str, str]:
    tags = op.tags if isinstance(op, HeldTransfer) else _tags(op)
    return {k: v for k, v in tags.items() if k in ("agent", "tool", "model")}
