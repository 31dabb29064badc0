"""Short-term memory: per-session state and turns in a KV bucket with a TTL (7 days), owned by
the memory service and keyed by tenant so one tenant never reaches another's sessions. On
close, a summarizer turns the session into a long-term memory."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import msgspec

from bus import MemoryRefused
from bus.kv import Bucket, RevisionConflict

from .messages import Turn

Summarizer = Callable[[Sequence[Turn]], str]
MAX_TURNS = 500
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Session(msgspec.Struct, kw_only=True):
    state: dict[str, str] = {}
    turns: list[Turn] = []


def extractive_summary(turns: Sequence[Turn], limit: int = 600) -> str:
    """The default summarizer until the LLM client exists: the session's turns, newest last,
    cut to `limit` characters."""
    text = " / ".join(f"{t.role}: {t.text}" for t in turns)
    return text if len(text) <= limit else "…" + text[-limit:]


class Sessions:
    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    @staticmethod
    def key(tenant: str, session: str) -> str:
        if not _SESSION.match(session):
            raise MemoryRefused(f"session id {session!r}: use 1-64 letters, digits, '-' or '_'")
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", tenant)
        return f"{safe}.{session}"

    async def get(self, tenant: str, session: str) -> Session:
        found = await self.bucket.get(self.key(tenant, session))
        return msgspec.json.decode(found[0], type=Session) if found else Session()

    async def update(self, tenant: str, session: str, change: Callable[[Session], None]) -> Session:
        key = self.key(tenant, session)
        for _ in range(50):
            found = await self.bucket.get(key)
            current = msgspec.json.decode(found[0], type=Session) if found else Session()
            change(current)
            data = msgspec.json.encode(current)
            try:
                if found:
                    await self.bucket.update(key, data, found[1])
                else:
                    await self.bucket.create(key, data)
                return current
            except RevisionConflict:
                continue
        raise MemoryRefused(f"session {session} kept changing under concurrent writes")

    async def close(self, tenant: str, session: str) -> Session:
        current = await self.get(tenant, session)
        await self.bucket.delete(self.key(tenant, session))
        return current


def append_turn(turn: Turn) -> Callable[[Session], None]:
    def change(session: Session) -> None:
        session.turns.append(turn)
        del session.turns[:-MAX_TURNS]

    return change
