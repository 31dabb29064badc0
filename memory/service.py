"""`relaybus service memory`: the only process that opens the vector store.

Long-term memory: `remember` → ADD / MERGE / SUPERSEDE / NOOP (content-hash dedupe, merge of
near-identical facts, supersede by key keeping history with validity times), `recall`,
`forget`, `history`; documents (`ingest` in bounded steps and `search_docs`, in
`relaybus.memory.documents`), sessions (`relaybus.memory.sessions`), and the tenant's own
`gc` / `stats`. The tenant is the principal of the caller's verified chain
(`relaybus.memory.tenancy`). Cross-tenant `admin_gc` / `admin_stats` are operator-only
(`relaybus.memory.maintenance`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from relaybus.bus import Bus, RelayError, Settings, default_topology, ensure, metrics
from relaybus.bus.kv import Bucket
from relaybus.bus.micro import Endpoint, MicroService, json_schema
from relaybus.bus.rpc import answer
from relaybus.bus.runtime import settle_heap, stop_on_signals
from relaybus.services.identity.client import IdentityGate
from relaybus.services.identity.settings import IdentitySettings

from .documents import DOCUMENTS, ingest, search_docs
from .edge import EdgeStore
from .embed import Embedder, LexicalEmbedder
from .keywords import document_keywords, query_keywords
from .maintenance import admin_gc, admin_stats, sweep, tenant_gc, tenant_stats
from .messages import (
    REQUESTS,
    Caller,
    Forget,
    History,
    Recall,
    Remember,
)
from .qdrant import QdrantStore
from .sessions import Sessions, Summarizer, extractive_summary, session_op
from .settings import MemorySettings
from .store import MemoryRefused, Scope, StoredPoint, VectorStore, point_id
from .tenancy import resolve_tenant

log = logging.getLogger("relaybus.memory")
COLLECTION = "memories"
MAX_TEXT = 8000
TIMED = ("recall", "search_docs")  # recorded in relaybus.memory.recall.duration
MERGE_SCORE = 0.97


class MemoryService:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        gate: IdentityGate | None = None,
        clock: Callable[[], float] = time.time,
        sessions: Sessions | None = None,
        summarizer: Summarizer = extractive_summary,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.summarizer = summarizer
        self.embedder = embedder
        self.gate = gate
        self.clock = clock

    async def start(self) -> None:
        await self.store.ensure_collection(COLLECTION, self.embedder.dim, self.embedder.id)
        await self.store.ensure_collection(DOCUMENTS, self.embedder.dim, self.embedder.id)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Vectors for `texts`, computed off the event loop: a semantic model takes tens of
        milliseconds a text (more on a busy machine), and meanwhile the service keeps answering
        and its connection keeps its heartbeats."""
        return await asyncio.to_thread(self.embedder.embed, texts)

    async def tenant(self, caller: Caller | None, action: str, op: str) -> str:
        """The principal of the caller's verified chain, allowed `action` by every link
        (`relaybus.memory.tenancy`); without identity (development), the caller's `principal`."""
        return await resolve_tenant(self.gate, caller, action, op)

    async def handle(self, subject: str, data: bytes) -> bytes:
        op = subject.rsplit(".", 1)[1]

        async def work() -> Any:
            handler = self.ops.get(op)
            if handler is None:
                raise MemoryRefused(f"unknown memory operation {op!r}")
            if op not in TIMED:
                return await handler(self, data)
            started = time.perf_counter()
            outcome = "error"
            try:
                body = await handler(self, data)
                outcome = "ok"
                return body
            finally:
                metrics.RECALL_DURATION.record(
                    time.perf_counter() - started, {"operation": op, "outcome": outcome}
                )

        return await answer(work, "memory", MemoryRefused)

    async def remember(self, data: bytes) -> Any:
        req = msgspec.json.decode(data, type=Remember)
        text = req.text.strip()
        if not text:
            raise MemoryRefused("cannot remember empty text")
        if len(text) > MAX_TEXT:
            raise MemoryRefused(
                f"text is {len(text)} characters; memories are at most {MAX_TEXT} (ingest documents instead)"
            )
        tenant = await self.tenant(req.caller, "memory/write", "remember")
        new_id = point_id(tenant, req.kind, text)
        scope = Scope(tenant=tenant, equals={"kind": req.kind})
        if await self.store.get(COLLECTION, [new_id], scope):
            return {"action": "NOOP", "id": new_id}
        (vector,) = await self.embed([text])
        keywords = document_keywords(text)
        now = self.clock()
        payload: dict[str, Any] = {
            "tenant": tenant,
            "kind": req.kind,
            "text": text,
            "key": req.key,
            "valid_from": now,
            "valid_to": 0.0,
            **{f"m_{k}": v for k, v in req.metadata.items()},
        }
        if req.key:
            current = [
                h
                for h in await self.store.scroll(
                    COLLECTION, Scope(tenant=tenant, equals={"key": req.key})
                )
                if not h.payload.get("valid_to")
            ]
            if current:
                vectors = await self.embed([h.payload["text"] for h in current])
                old = [
                    StoredPoint(
                        id=h.id,
                        vector=vector_of_h,
                        payload={**h.payload, "valid_to": now, "superseded_by": new_id},
                        keywords=document_keywords(h.payload["text"]),
                    )
                    for h, vector_of_h in zip(current, vectors, strict=True)
                ]
                await self.store.upsert(
                    COLLECTION,
                    [
                        *old,
                        StoredPoint(id=new_id, vector=vector, payload=payload, keywords=keywords),
                    ],
                )
                return {"action": "SUPERSEDE", "id": new_id, "superseded": [h.id for h in current]}
        near = [
            h
            for h in await self.store.search(COLLECTION, vector, scope, 1)
            if h.score >= MERGE_SCORE and not h.payload.get("valid_to")
        ]
        if near:
            merged = {
                **near[0].payload,
                **{k: v for k, v in payload.items() if k.startswith("m_")},
                "seen": int(near[0].payload.get("seen", 1)) + 1,
                "last_seen": now,
            }
            await self.store.upsert(
                COLLECTION,
                [StoredPoint(id=near[0].id, vector=vector, payload=merged, keywords=keywords)],
            )
            return {"action": "MERGE", "id": near[0].id}
        await self.store.upsert(
            COLLECTION,
            [StoredPoint(id=new_id, vector=vector, payload=payload, keywords=keywords)],
        )
        return {"action": "ADD", "id": new_id}

    async def recall(self, data: bytes) -> Any:
        req = msgspec.json.decode(data, type=Recall)
        if not req.query.strip() or not 0 < req.k <= 100:
            raise MemoryRefused("recall needs a query and 1 <= k <= 100")
        tenant = await self.tenant(req.caller, "memory/read", "recall")
        scope = Scope(tenant=tenant, equals={"kind": req.kind} if req.kind else {})
        (query_vector,) = await self.embed([req.query])
        hits = await self.store.search(
            COLLECTION,
            query_vector,
            scope,
            req.k * 4,
            keywords=query_keywords(req.query),
        )

        def valid(p: dict[str, Any]) -> bool:
            if not req.as_of:
                return not p.get("valid_to")
            return p.get("valid_from", 0) <= req.as_of and (
                not p.get("valid_to") or req.as_of < p["valid_to"]
            )

        return [
            {"id": h.id, "score": h.score, "text": h.payload["text"], "kind": h.payload["kind"]}
            for h in hits
            if valid(h.payload)
        ][: req.k]

    async def forget(self, data: bytes) -> Any:
        req = msgspec.json.decode(data, type=Forget)
        tenant = await self.tenant(req.caller, "memory/write", "forget")
        scope = Scope(tenant=tenant, equals={"kind": req.kind} if req.kind else {})
        return {"forgotten": await self.store.delete(COLLECTION, scope, req.ids)}

    async def history(self, data: bytes) -> Any:
        req = msgspec.json.decode(data, type=History)
        tenant = await self.tenant(req.caller, "memory/read", "history")
        hits = await self.store.scroll(COLLECTION, Scope(tenant=tenant, equals={"key": req.key}))
        return sorted(
            (
                {
                    "id": h.id,
                    "text": h.payload["text"],
                    "valid_from": h.payload["valid_from"],
                    "valid_to": h.payload.get("valid_to") or None,
                }
                for h in hits
            ),
            key=lambda r: r["valid_from"],
        )

    async def ping(self, data: bytes) -> Any:
        return {"embedder": self.embedder.id}

    ops: dict[str, Callable[[MemoryService, bytes], Awaitable[Any]]] = {
        "remember": remember,
        "recall": recall,
        "forget": forget,
        "history": history,
        "ping": ping,
        "ingest": ingest,
        "search_docs": search_docs,
        "gc": tenant_gc,
        "stats": tenant_stats,
        "admin_gc": admin_gc,
        "admin_stats": admin_stats,
        "session": session_op,
    }


def choose_embedder(name: str) -> Embedder:
    """`minilm` (semantic, offline), `lexical`, or `auto`: MiniLM when its package is installed."""
    if name not in ("auto", "minilm", "lexical"):
        raise MemoryRefused(f"RELAYBUS_EMBEDDER={name!r}: use auto, minilm or lexical")
    if name == "lexical":
        return LexicalEmbedder()
    try:
        from .minilm import MiniLMEmbedder

        return MiniLMEmbedder()
    except (ImportError, RelayError) as exc:
        if name == "minilm":
            raise
        log.warning("semantic embedder unavailable (%s); using the lexical one", exc)
        return LexicalEmbedder()


def open_store(settings: Settings) -> VectorStore:
    qdrant_url = MemorySettings.of(settings).qdrant_url
    if qdrant_url:
        return QdrantStore.connect(url=qdrant_url)
    return EdgeStore(settings.home.resolve() / "memory")


def memory_micro(bus: Bus, service: MemoryService) -> MicroService:
    """`relaybus-memory`: one endpoint per operation on `<prefix>.svc.memory.<op>`."""
    return MicroService(
        bus,
        name="relaybus-memory",
        description="relaybus memory: long-term facts, documents and sessions per tenant",
        queue="memory",
        endpoints=[
            Endpoint(
                name=op,
                subject=bus.subjects.service("memory", op),
                handler=service.handle,
                request_schema=json_schema(REQUESTS[op]),
            )
            for op in MemoryService.ops
        ],
        unmatched=(bus.subjects.service_ops("memory"), service.handle),
    )


async def serve_memory(settings: Settings) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    settle_heap()
    store = open_store(settings)
    async with Bus(settings, name="memory") as bus:
        bus.stop_when_lost(stop)
        await ensure(bus, default_topology(bus.subjects, bus.settings.stream_replicas))
        identity = IdentitySettings.of(settings).identity
        gate = await IdentityGate.open(bus, "memory", None) if identity else None
        if gate is None:
            log.warning(
                "RELAYBUS_IDENTITY=0: memory requests are not verified and each names its own "
                "tenant (`principal`). For development only; turn identity on elsewhere."
            )
        sessions = Sessions(await Bucket.open(bus, bus.subjects.bucket("sessions")))
        embedder = choose_embedder(MemorySettings.of(settings).embedder)
        service = MemoryService(store, embedder, gate, sessions=sessions)
        await service.start()
        sweeper = asyncio.create_task(sweep(service, settings))
        try:
            async with memory_micro(bus, service):
                log.info(
                    "memory service answering (%s, %s)", type(store).__name__, service.embedder.id
                )
                await stop.wait()
        finally:
            sweeper.cancel()
            if gate is not None:
                await gate.close()
            await store.close()
    return 1 if bus.lost else 0
