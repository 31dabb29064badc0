"""What agents use of memory: `ctx.memory.remember(...)`, `.recall(...)`, `.forget(...)`,
`.history(...)`, documents, sessions, and their own tenant's `.gc(...)` / `.stats()`. Every call
carries the caller's chain; the operator's cross-tenant `admin_gc` / `admin_stats` are not here."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import SpanKind

from relaybus.bus import Bus, rpc, tracing

from .messages import (
    Caller,
    Forget,
    History,
    Ingest,
    Recall,
    Remember,
    SearchDocs,
    SessionOp,
    Stats,
    TenantGc,
    Turn,
)


class MemoryClient:
    def __init__(self, bus: Bus, caller: Caller) -> None:
        self.bus = bus
        self.caller = caller

    async def _call(self, op: str, body: Any) -> Any:
        with tracing.TRACER.start_as_current_span(
            f"memory {op}",
            kind=SpanKind.CLIENT,
            attributes={
                "relaybus.run_id": self.caller.run_id,
                "relaybus.memory.operation": op,
            },
        ):
            return await rpc.call(self.bus, self.bus.subjects.service("memory", op), body)

    async def remember(
        self, text: str, kind: str = "fact", metadata: dict[str, str] | None = None, key: str = ""
    ) -> dict[str, Any]:
        """Store a memory: returns {"action": ADD | MERGE | SUPERSEDE | NOOP, "id": …}."""
        return dict(
            await self._call(
                "remember",
                Remember(
                    caller=self.caller, text=text, kind=kind, key=key, metadata=metadata or {}
                ),
            )
        )

    async def recall(
        self, query: str, k: int = 5, kind: str = "", as_of: float = 0.0
    ) -> list[dict[str, Any]]:
        return list(
            await self._call(
                "recall", Recall(caller=self.caller, query=query, k=k, kind=kind, as_of=as_of)
            )
        )

    async def forget(self, ids: list[str] | None = None, kind: str = "") -> int:
        return int(
            (await self._call("forget", Forget(caller=self.caller, ids=ids, kind=kind)))[
                "forgotten"
            ]
        )

    async def history(self, key: str) -> list[dict[str, Any]]:
        return list(await self._call("history", History(caller=self.caller, key=key)))

    async def ingest(self, collection: str, source: str, text: str) -> dict[str, Any]:
        """Chunk `text` into `collection` as `source`; re-ingesting replaces changed chunks."""
        return dict(
            await self._call(
                "ingest",
                Ingest(caller=self.caller, collection=collection, source=source, text=text),
            )
        )

    async def search_docs(
        self, query: str, k: int = 5, collection: str = ""
    ) -> list[dict[str, Any]]:
        """Document chunks for `query`: dense and keyword rankings fused."""
        return list(
            await self._call(
                "search_docs",
                SearchDocs(caller=self.caller, query=query, k=k, collection=collection),
            )
        )

    async def gc(self, dry_run: bool = True, **policy: Any) -> dict[str, Any]:
        """One garbage-collection pass over this tenant's own memories (`relaybus.memory.messages.Gc`
        fields as `policy`); `dry_run` only reports the candidates."""
        body = TenantGc(caller=self.caller, dry_run=dry_run, **policy)
        return dict(await self._call("gc", body))

    async def stats(self) -> dict[str, Any]:
        """What this tenant stores: memories, document chunks, superseded facts."""
        return dict(await self._call("stats", Stats(caller=self.caller)))

    async def _session(self, session: str, action: str, **fields: Any) -> Any:
        return await self._call(
            "session", SessionOp(caller=self.caller, session=session, action=action, **fields)
        )

    async def session_get(self, session: str) -> dict[str, Any]:
        return dict(await self._session(session, "get"))

    async def session_put(self, session: str, state: dict[str, str]) -> dict[str, Any]:
        return dict(await self._session(session, "put", state=state))

    async def append_turn(self, session: str, role: str, text: str) -> int:
        return int(
            (await self._session(session, "append", turn=Turn(role=role, text=text)))["turns"]
        )

    async def window(self, session: str, last: int = 20) -> list[dict[str, Any]]:
        return list(await self._session(session, "window", last=last))

    async def close_session(self, session: str) -> dict[str, Any]:
        """Summarize the session into long-term memory and drop its short-term state."""
        return dict(await self._session(session, "close"))
