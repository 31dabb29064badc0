"""A2A tasks kept in a NATS KV bucket (`<prefix>_a2a_tasks`), so a restarted or second
`relaybus a2a serve` answers `GetTask`, follow-ups and `CancelTask` for tasks another process
started. Keys are per owner (the verified caller): one user's lookup never reads another's."""

from __future__ import annotations

import base64

from a2a.server.context import ServerCallContext
from a2a.server.owner_resolver import OwnerResolver, resolve_user_scope
from a2a.server.tasks import InMemoryTaskStore
from a2a.server.tasks.task_store import TaskStore
from a2a.types import a2a_pb2
from a2a.types.a2a_pb2 import Task

from relaybus.bus import Bus
from relaybus.bus.kv import Bucket

BUCKET = "a2a_tasks"


def _token(text: str) -> str:
    """`text` as one KV key token (base64url: letters, digits, `-`, `_`, `=`), reversible."""
    return base64.urlsafe_b64encode(text.encode()).decode() or "="


class KvTaskStore(TaskStore):
    def __init__(
        self, bucket: Bucket, agent: str, owner_resolver: OwnerResolver = resolve_user_scope
    ) -> None:
        self.bucket = bucket
        self.agent = agent  # a checked agent name: one key token as it is
        self.owner_resolver = owner_resolver

    @classmethod
    async def open(cls, bus: Bus, agent: str) -> KvTaskStore:
        return cls(await Bucket.open(bus, bus.subjects.bucket(BUCKET)), agent)

    def _owner_prefix(self, context: ServerCallContext) -> str:
        return f"{self.agent}.{_token(self.owner_resolver(context))}."

    def _key(self, task_id: str, context: ServerCallContext) -> str:
        return f"{self._owner_prefix(context)}{_token(task_id)}"

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await self.bucket.put(self._key(task.id, context), task.SerializeToString())

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        found = await self.bucket.get(self._key(task_id, context))
        if found is None:
            return None
        task = Task()
        task.ParseFromString(found[0])
        return task

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        await self.bucket.delete(self._key(task_id, context))

    async def list(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        """The owner's tasks, filtered and paged as the SDK's in-memory store does."""
        prefix = self._owner_prefix(context)
        page = InMemoryTaskStore(owner_resolver=self.owner_resolver)
        for key in await self.bucket.keys():
            if key.startswith(prefix):
                found = await self.bucket.get(key)
                if found is not None:
                    task = Task()
                    task.ParseFromString(found[0])
                    await page.save(task, context)
        return await page.list(params, context)
