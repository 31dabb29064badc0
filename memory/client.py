"""What agents use of memory: `ctx.memory.remember(...)`, `.recall(...)`, `.forget(...)`,
`.history(...)`, documents, sessions, and their own tenant's `.gc(...)` / `.stats()`. Every call
carries the caller's chain; the operator's cross-tenant `admin_gc` / `admin_stats` are not here."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind

from relaybus.bus import Bus, ConnectionFailed, ServiceUnavailable, rpc, tracing

from .errors import MemoryRefused
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

log = logging.getLogger("relaybus.memory")
INGEST_STEP_CHUNKS = 32  # new chunks one `ingest` request embeds at most
INGEST_STEP_SHARE = 0.25  # of the request timeout, the time one `ingest` request embeds for
INGEST_STEP_RETRIES = 6  # times a step that got no reply in time is sent again, each half as big


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

    async def ingest(
        self,
        collection: str,
        source: str,
        text: str,
        on_step: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Chunk `text` into `collection` as `source`; re-ingesting replaces changed chunks.

        Sent in bounded steps, each embedding at most `INGEST_STEP_CHUNKS` new chunks for about
        `INGEST_STEP_SHARE` of the request timeout, until every chunk is stored: a long document
        never runs into the timeout, and other requests are answered in between. `on_step` sees
        each step's reply (`chunks`, `kept`, `added`, `pending`: progress). A step that times out
        is sent again: a step stores nothing twice. Returns the totals and the `steps` taken."""
        body = Ingest(
            caller=self.caller,
            collection=collection,
            source=source,
            text=text,
            limit=INGEST_STEP_CHUNKS,
            budget_s=self.bus.settings.request_timeout_s * INGEST_STEP_SHARE,
        )
        self._check_size(source, body)
        steps: list[dict[str, Any]] = []
        while True:
            step, body = await self._ingest_step(body)
            grew = step["kept"] - (steps[-1]["kept"] + steps[-1]["added"]) if steps else 0
            steps.append(step)
            if on_step is not None:
                on_step(step)
            if not step["pending"]:
                break
            if not step["added"] and grew <= 0:
                raise MemoryRefused(f"{source}: the memory service stored nothing in a step")
        # a step whose reply was lost (and sent again) stored its chunks all the same: they
        # show as `kept` growing by more than the step before it added
        lost = sum(
            later["kept"] - earlier["kept"] - earlier["added"]
            for earlier, later in itertools.pairwise(steps)
        )
        return {
            "source": source,
            "chunks": step["chunks"],
            "kept": steps[0]["kept"],
            "added": sum(s["added"] for s in steps) + max(0, lost),
            "removed": step["removed"],
            "steps": len(steps),
        }

    def _check_size(self, source: str, body: Ingest) -> None:
        size = len(msgspec.json.encode(body))
        limit = self.bus.nc.max_payload
        if size > limit:
            raise MemoryRefused(
                f"{source}: a request with it is {size} bytes, over the {limit} bytes NATS "
                "carries in one message; split the document into smaller files"
            )

    async def _ingest_step(self, body: Ingest) -> tuple[dict[str, Any], Ingest]:
        """One step's reply, and the step to send next: a step that got no reply in time (a
        loaded machine embeds slowly) is sent again half as big, down to one chunk."""
        for attempt in range(INGEST_STEP_RETRIES + 1):
            try:
                return dict(await self._call("ingest", body)), body
            except ServiceUnavailable:
                raise  # already retried for twice the request timeout (`rpc.call`)
            except ConnectionFailed:  # no reply in time: the service may still be embedding
                if attempt == INGEST_STEP_RETRIES:
                    raise
                # the service works through what it was sent in order: a moment's pause lets
                # the step that timed out finish there before a smaller one queues behind it
                await asyncio.sleep(min(4.0, 0.5 * 2**attempt))
                body = msgspec.structs.replace(body, limit=max(1, body.limit // 2))
                log.warning(
                    "ingest of %s: no reply in time; sending the step again with at most %d "
                    "chunk(s)",
                    body.source,
                    body.limit,
                )
        raise AssertionError("unreachable")  # pragma: no cover

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
