"""Outcomes merged together: what reaches one parent's journal while a write of it is on its
way goes out with the next write, as one (group commit). Eight children that answer at once
share two or three merge writes instead of taking seven in turn, so the last outcome does not
wait behind seven round trips.

Each outcome's message is acked only once the write holding its change is stored. A group whose
write fails for one of its outcomes (a result too large for the journal) is written again one
outcome at a time, so that one does not use up the others' deliveries; one the bucket did not
answer fails as a whole. What fails is put back, and its redelivery merges it again (a merge is
idempotent). The outcome that completes
what the task waits for is not grouped: it waits for the writes on their way, then wakes the
task on top of them (`resuming`)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import NamedTuple

from relaybus.bus import ConnectionFailed, RelayError

from .journal import Journal, JournalStore, claim, copied


class Merged(NamedTuple):
    """One outcome's merge as stored: the journal at `revision` (shared by the group's outcomes,
    to read; a copy of its own for the one it claimed), and whether its change completed what
    the task waited for, so the write claimed the task for it."""

    journal: Journal
    revision: int
    claimed: bool


class _Member(NamedTuple):
    change: Callable[[Journal], None]
    owner: str
    driver: str
    done: asyncio.Future[Merged]


class _Group:
    __slots__ = ("idle", "waiting", "writing")

    def __init__(self) -> None:
        self.waiting: list[_Member] = []  # for the next write
        self.writing: list[_Member] = []  # in the write on its way
        self.idle = asyncio.Event()  # set once no write of the group is left


class Merges:
    """One process's merges into its agent's journals, written in groups per journal."""

    def __init__(self, journals: JournalStore) -> None:
        self.journals = journals
        self._groups: dict[str, _Group] = {}
        self._writers: set[asyncio.Task[None]] = set()

    def ahead(self, run_id: str, task_id: str, found: tuple[Journal, int]) -> tuple[Journal, int]:
        """`found` with the merges on their way here applied (in place): what the journal will
        hold once they are stored, to tell whether one more outcome completes the wait."""
        group = self._groups.get(self.journals.key(run_id, task_id))
        if group is not None:
            for member in (*group.writing, *group.waiting):
                member.change(found[0])
        return found

    def on_their_way(self, run_id: str, task_id: str) -> bool:
        return self.journals.key(run_id, task_id) in self._groups

    async def stored(self, run_id: str, task_id: str) -> None:
        """Wait until no merge of this journal is on its way (stored or failed)."""
        group = self._groups.get(self.journals.key(run_id, task_id))
        if group is not None:
            await group.idle.wait()

    def merge(
        self,
        run_id: str,
        task_id: str,
        change: Callable[[Journal], None],
        *,
        owner: str,
        driver: str,
        current: tuple[Journal, int] | None,
    ) -> asyncio.Future[Merged]:
        """Merge `change` (idempotent) with the next write of the journal (`current`, when no
        write is on its way: the journal as last read, the change applied or not); a change
        that completes what the task waits for claims it for `owner`, driven by `driver`.
        Joins at once; the future is done once the write holding it is stored."""
        key = self.journals.key(run_id, task_id)
        member = _Member(change, owner, driver, asyncio.get_running_loop().create_future())
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
            writer = asyncio.create_task(
                self._write(key, run_id, task_id, group, current),
                context=contextvars.Context(),  # not any one outcome's span: the group's
            )
            self._writers.add(writer)
            writer.add_done_callback(lambda _: self._ended(key, task_id, group))
            writer.add_done_callback(self._writers.discard)
        group.waiting.append(member)
        # shielded: an outcome whose handler stops leaves the write to the others in it
        return asyncio.shield(member.done)

    async def _write(
        self,
        key: str,
        run_id: str,
        task_id: str,
        group: _Group,
        current: tuple[Journal, int] | None,
    ) -> None:
        try:
            while group.waiting:
                batch = group.writing = group.waiting
                group.waiting = []
                try:
                    await self._store(run_id, task_id, batch, current)
                except ConnectionFailed as exc:  # the bucket, not an outcome: all of them
                    _fail(batch, exc)
                except Exception as exc:
                    if len(batch) == 1:
                        _fail(batch, exc)
                    else:
                        await self._each_alone(run_id, task_id, batch)
                current = self.journals.recent(run_id, task_id)
                group.writing = []
        finally:  # at once: a merge that comes next starts a group of its own
            self._ended(key, task_id, group)

    async def _store(
        self,
        run_id: str,
        task_id: str,
        batch: list[_Member],
        current: tuple[Journal, int] | None,
    ) -> None:
        claimed_by: list[int] = []
        journal, revision = await self.journals.mutate(
            run_id, task_id, _all_of(batch, claimed_by), current=current
        )
        for i, member in enumerate(batch):
            if not member.done.done():
                claimed = i in claimed_by  # its own copy: it runs the task, which changes it
                member.done.set_result(
                    Merged(copied(journal) if claimed else journal, revision, claimed)
                )

    async def _each_alone(self, run_id: str, task_id: str, batch: list[_Member]) -> None:
        """A group whose write failed for one of its outcomes (one too large to store, say):
        each written alone, so only that one fails."""
        for i, member in enumerate(batch):
            try:
                await self._store(run_id, task_id, [member], None)
            except ConnectionFailed as exc:
                _fail(batch[i:], exc)
                return
            except Exception as exc:
                _fail([member], exc)

    def _ended(self, key: str, task_id: str, group: _Group) -> None:
        """The group's writer is done (or was stopped, even before it started, when only its
        done callback says so): whoever still waits in it fails, and the next merge starts a
        group of its own. Called twice, the second call changes nothing."""
        for member in (*group.writing, *group.waiting):  # an error of its own each
            _fail([member], RelayError(f"the merge into the journal of task {task_id} stopped"))
        if self._groups.get(key) is group:
            del self._groups[key]
        group.idle.set()


def _all_of(batch: list[_Member], claimed_by: list[int]) -> Callable[[Journal], None]:
    """One change: every member's, in turn; `claimed_by` names the one that woke the task."""

    def change(journal: Journal) -> None:
        claimed_by.clear()  # (applied again on a fresh read after a conflict)
        for i, member in enumerate(batch):
            member.change(journal)
            # or claimed by its own write already (stored, though its reply was lost)
            if claim(journal, member.owner, member.driver) or (
                journal.status == "running" and journal.owner == member.owner
            ):
                claimed_by.append(i)

    return change


def _fail(members: list[_Member], exc: BaseException) -> None:
    for member in members:
        if not member.done.done():
            member.done.set_exception(exc)
