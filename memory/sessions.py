"""Short-term memory: per-session state and turns in a KV bucket with a TTL (7 days), owned by
the memory service and keyed by tenant so one tenant never reaches another's sessions. On
close, a summarizer turns the session into a long-term memory."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from relaybus.bus.kv import Bucket, RevisionConflict
from relaybus.memory.errors import MemoryRefused

from .messages import Remember, SessionOp, Turn

if TYPE_CHECKING:
    from .service import MemoryService

Summarizer = Callable[[Sequence[Turn]], str]
MAX_TURNS = 500
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TENANT_SAFE = re.compile(r"[A-Za-z0-9-]")


def tenant_token(tenant: str) -> str:
    """`tenant` as a KV key token, one-to-one: letters, digits and '-' stay, anything else
    (including '_') becomes `_` + six hex digits, so `a.b` and `a_b` never share a key."""
    return "".join(c if _TENANT_SAFE.fullmatch(c) else f"_{ord(c):06x}" for c in tenant)


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
        return f"{tenant_token(tenant)}.{session}"

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


async def session_op(service: MemoryService, data: bytes) -> Any:
    """The `session` operation: get / put / append / window / close one session of the
    caller's tenant (close summarizes it into a `session_summary` memory)."""
    req = msgspec.json.decode(data, type=SessionOp)
    sessions = service.sessions
    if sessions is None:
        raise MemoryRefused("sessions need the memory service's bus")
    write = req.action in ("put", "append", "close")
    tenant = await service.tenant(req.caller, "memory/write" if write else "memory/read", "session")
    if req.action == "get":
        return msgspec.to_builtins(await sessions.get(tenant, req.session))
    if req.action == "window":
        current = await sessions.get(tenant, req.session)
        return [msgspec.to_builtins(t) for t in current.turns[-max(1, req.last) :]]
    if req.action == "put":
        state = req.state
        done = await sessions.update(tenant, req.session, lambda s: s.state.update(state))
        return msgspec.to_builtins(done)
    if req.action == "append":
        if req.turn is None or not req.turn.text.strip():
            raise MemoryRefused("append needs a turn with text")
        turn = Turn(role=req.turn.role, text=req.turn.text, at=req.turn.at or service.clock())
        done = await sessions.update(tenant, req.session, append_turn(turn))
        return {"turns": len(done.turns)}
    if req.action == "close":
        closed = await sessions.close(tenant, req.session)
        if not closed.turns:
            return {"summary": None}
        summary = service.summarizer(closed.turns)
        remembered = await service.remember(
            msgspec.json.encode(
                Remember(
                    caller=req.caller,
                    text=summary,
                    kind="session_summary",
                    metadata={"session": req.session},
                )
            )
        )
        return {"summary": summary, **remembered}
    raise MemoryRefused(f"unknown session action {req.action!r}: get, put, append, window or close")
