"""What agents use of memory: `ctx.memory.remember(...)`, `.recall(...)`, `.forget(...)`, `.history(...)`."""

from __future__ import annotations

from typing import Any

from bus import Bus, rpc

from .messages import Caller, Forget, History, Ingest, Recall, Remember, SearchDocs


class MemoryClient:
    def __init__(self, bus: Bus, caller: Caller) -> None:
        self.bus = bus
        self.caller = caller

    async def _call(self, op: str, body: Any) -> Any:
        return await rpc.call(self.bus, f"{self.bus.subjects.prefix}.svc.memory.{op}", body)

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
