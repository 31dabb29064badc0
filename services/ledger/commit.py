"""Group commit: entries decided while one journal append is in flight wait together for the
next, so the journal takes one append per batch of decisions, in decision order."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Chunk(Generic[T]):
    def __init__(self) -> None:
        self.items: list[T] = []
        self.stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class GroupCommit(Generic[T]):
    """Appends run one at a time, each taking everything queued meanwhile (at most
    `max_batch` items: the rest fills the appends after it)."""

    def __init__(self, append: Callable[[list[T]], Awaitable[None]], max_batch: int = 2048):
        self._append = append
        self.max_batch = max_batch
        self._queued: deque[_Chunk[T]] = deque()
        self._inflight: _Chunk[T] | None = None
        self._committer: asyncio.Task[None] | None = None

    def enqueue(self, items: list[T]) -> asyncio.Future[None]:
        """Queue `items` (in order) for the next appends; the future is done once the last of
        them is stored (appends are in order, so all of them are), or fails with the append's
        error. Call without awaiting between decisions: the queue's order is theirs."""
        for item in items:
            if not self._queued or len(self._queued[-1].items) >= self.max_batch:
                self._queued.append(_Chunk())
            self._queued[-1].items.append(item)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit())
        return self._queued[-1].stored if self._queued else self.barrier()

    def barrier(self) -> asyncio.Future[None]:
        """Done once everything queued or in flight so far is stored."""
        if self._queued:
            return self._queued[-1].stored
        if self._inflight is not None:
            return self._inflight.stored
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _commit(self) -> None:
        while self._queued:
            chunk = self._inflight = self._queued.popleft()
            try:
                await self._append(chunk.items)
            except BaseException as exc:  # this append and every one after it fail
                for failed in (chunk, *self._queued):
                    failed.stored.set_exception(exc)
                    failed.stored.exception()  # retrieved: its callers may have gone
                self._queued.clear()
                return
            finally:
                self._inflight = None
            chunk.stored.set_result(None)
