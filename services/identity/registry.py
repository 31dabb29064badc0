"""The registry in KV buckets: agents, users (and roles), revocations, the service key.

Read by every process (verification needs agent keys and revocations); written only by the
identity service.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import msgspec
from nacl.signing import VerifyKey

from relaybus.bus import Bus, RelayError
from relaybus.bus.kv import Bucket, RevisionConflict
from relaybus.bus.kvview import WatchedBucket

from .messages import AgentRecord, RoleRecord, ServiceInfo, UserRecord

R = TypeVar("R")

SERVICE_KEY = "_service"


def revocation_key(key: str) -> str:
    """`agent:research` → `agent.research` (KV keys cannot hold ':')."""
    return key.replace(":", ".")


class Registry:
    def __init__(self, agents: Bucket, users: Bucket, revoked: Bucket) -> None:
        self.agents = agents
        self.users = users
        self.revoked = revoked

    @classmethod
    async def open(cls, bus: Bus) -> Registry:
        b = bus.subjects.bucket
        return cls(
            await Bucket.open(bus, b("agents")),
            await Bucket.open(bus, b("users")),
            await Bucket.open(bus, b("revoked")),
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def watched(cls, bus: Bus) -> AsyncIterator[Registry]:
        """The registry read from memory, each bucket followed by a watch (bus/kvview.py): a
        stamp or a run's root costs no registry read. The identity service's view; a write by
        another replica reaches it with the watch, a revocation included (milliseconds)."""
        plain = await cls.open(bus)
        async with (
            WatchedBucket(plain.agents, bus.nc) as agents,
            WatchedBucket(plain.users, bus.nc) as users,
            WatchedBucket(plain.revoked, bus.nc, misses="absent") as revoked,
        ):
            yield cls(agents, users, revoked)

    async def agent(self, name: str) -> AgentRecord | None:
        found = await self.agents.get(f"agent.{name}")
        return msgspec.json.decode(found[0], type=AgentRecord) if found else None

    async def all_agents(self) -> list[AgentRecord]:
        return await _all_records(self.agents, "agent.", AgentRecord)

    async def all_users(self) -> list[UserRecord]:
        return await _all_records(self.users, "user.", UserRecord)

    async def put_agent(self, record: AgentRecord) -> None:
        await self.agents.put(f"agent.{record.name}", msgspec.json.encode(record))

    async def user(self, user_id: str, *, current: bool = False) -> UserRecord | None:
        """`current`: from the server, not a watched copy (a token issued a moment ago)."""
        key = f"user.{user_id}"
        found = await (self.users.get_current(key) if current else self.users.get(key))
        return msgspec.json.decode(found[0], type=UserRecord) if found else None

    async def put_user(self, record: UserRecord) -> None:
        await self.users.put(f"user.{record.id}", msgspec.json.encode(record))

    async def change_user(
        self, user_id: str, change: Callable[[UserRecord | None], UserRecord]
    ) -> UserRecord:
        """Read-modify-write with compare-and-set: identity replicas issuing tokens to one user
        at once keep every token."""
        key = f"user.{user_id}"
        for _ in range(50):
            found = await self.users.get(key)
            record = change(msgspec.json.decode(found[0], type=UserRecord) if found else None)
            data = msgspec.json.encode(record)
            try:
                if found is None:
                    await self.users.create(key, data)
                else:
                    await self.users.update(key, data, found[1])
                return record
            except RevisionConflict:
                continue
        raise RelayError(f"user {user_id} kept changing; try again")

    async def role(self, name: str) -> RoleRecord | None:
        found = await self.users.get(f"role.{name}")
        return msgspec.json.decode(found[0], type=RoleRecord) if found else None

    async def put_role(self, record: RoleRecord) -> None:
        await self.users.put(f"role.{record.name}", msgspec.json.encode(record))

    async def service_key(self) -> VerifyKey | None:
        found = await self.agents.get(SERVICE_KEY)
        if not found:
            return None
        return VerifyKey(bytes.fromhex(msgspec.json.decode(found[0], type=ServiceInfo).public_key))

    async def create_service_key(self, key: VerifyKey) -> None:
        """Publish the trust root; RevisionConflict if there is one already."""
        await self.agents.create(
            SERVICE_KEY, msgspec.json.encode(ServiceInfo(public_key=bytes(key).hex()))
        )

    async def revoke(self, key: str, reason: str) -> None:
        await self.revoked.put(revocation_key(key), reason.encode() or b"revoked")

    async def is_revoked(self, key: str) -> bool:
        return await self.revoked.get(revocation_key(key)) is not None


async def _all_records(bucket: Bucket, prefix: str, kind: type[R]) -> list[R]:
    """Every record under `prefix` in `bucket`, in key order."""
    out = []
    for key in sorted(await bucket.keys()):
        if key.startswith(prefix) and (found := await bucket.get(key)):
            out.append(msgspec.json.decode(found[0], type=kind))
    return out
