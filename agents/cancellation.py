"""Cancellation in an agent process: which runs and tasks were cancelled, and the asyncio tasks
running them here, so a control message stops them where they are."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from relaybus.bus import Envelope, Subjects
from relaybus.bus.codec import decode_or_none
from relaybus.bus.recent import Recent

from .messages import CancelRun, control_decoder

log = logging.getLogger("relaybus.worker")
KNOWN = 65_536  # cancelled runs, and cancelled tasks, a process remembers


class Cancellations:
    def __init__(self, subjects: Subjects) -> None:
        self.subjects = subjects
        self._by_run: dict[str, set[asyncio.Task[Any]]] = {}
        self._by_task: dict[str, asyncio.Task[Any]] = {}
        self._parents: dict[str, str] = {}  # running task → the agent waiting for its result
        # runs and tasks apart (a task id could be chosen to name someone else's run), and
        # bounded: what a long-lived process learned keeps only its recent entries
        self._runs: Recent[str, bool] = Recent(KNOWN)
        self._tasks: Recent[tuple[str, str], bool] = Recent(KNOWN)

    @contextlib.contextmanager
    def running(self, env: Envelope) -> Iterator[None]:
        """The current asyncio task runs task `env` until the block ends."""
        current = asyncio.current_task()
        assert current is not None
        self._by_run.setdefault(env.run_id, set()).add(current)
        self._by_task[env.id] = current
        self._parents[env.id] = env.reply_to
        try:
            yield
        finally:
            self._by_task.pop(env.id, None)
            self._parents.pop(env.id, None)
            tasks = self._by_run.get(env.run_id)
            if tasks is not None:
                tasks.discard(current)
                if not tasks:
                    del self._by_run[env.run_id]

    def is_cancelled(self, env: Envelope) -> bool:
        return bool(self._runs.get(env.run_id) or self._tasks.get((env.run_id, env.id)))

    def learned(self, run_id: str, task_id: str = "") -> None:
        """A run (or one task of it) found cancelled in its run's record: known from now on."""
        if task_id:
            self._tasks.set((run_id, task_id), True)
        else:
            self._runs.set(run_id, True)

    async def on_control(self, subject: str, data: bytes) -> None:
        """A run cancelled by an operator (no sender token), or tasks cancelled by the agent
        that started them (its name is the subject's last token); anything else is ignored."""
        source = self.subjects.source_of(subject)
        control = decode_or_none(control_decoder, data)
        if control is None:
            log.warning("ignoring a malformed control message")
            return
        if isinstance(control, CancelRun):
            if source:
                log.warning("ignoring a cancel of run %s sent by agent %s", control.run_id, source)
                return
            self._runs.set(control.run_id, True)
            for task in list(self._by_run.get(control.run_id, ())):
                task.cancel()
        else:
            for task_id in control.tasks:
                if source and self._parents.get(task_id) != source:
                    continue  # only the agent that started a task may cancel it
                self._tasks.set((control.run_id, task_id), True)
                running = self._by_task.get(task_id)
                if running is not None:
                    running.cancel()
