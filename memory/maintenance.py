"""Garbage collection and stats: per tenant (`gc`, `stats`: the caller's own memories, through its
chain) and across tenants (`admin_gc`, `admin_stats`: operator and service connections only —
agents' NATS users may not publish to them, see `relaybus.memory.messages.AGENT_OPS`)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from relaybus.bus import RelayError, Settings
from relaybus.memory.settings import MemorySettings

from .gc import collect, policy_from
from .messages import Gc, Stats, TenantGc
from .store import Scope

if TYPE_CHECKING:
    from .service import MemoryService

log = logging.getLogger("relaybus.memory")
COLLECTION = "memories"
DOCUMENTS = "documents"
MAX_POINTS = 100_000


async def tenant_gc(service: MemoryService, data: bytes) -> Any:
    """One pass over the caller's own tenant; `dry_run` (the default) needs `memory/read`,
    removing needs `memory/write`."""
    req = msgspec.json.decode(data or b"{}", type=TenantGc)
    action = "memory/read" if req.dry_run else "memory/write"
    tenant = await service.tenant(req.caller, action, "gc")
    return await collect(service.store, req, service.clock(), tenant=tenant)


async def tenant_stats(service: MemoryService, data: bytes) -> Any:
    """What the caller's own tenant stores."""
    req = msgspec.json.decode(data or b"{}", type=Stats)
    tenant = await service.tenant(req.caller, "memory/read", "stats")
    scope = Scope(tenant=tenant)
    points = await service.store.scroll(COLLECTION, scope, limit=MAX_POINTS)
    return {
        "tenant": tenant,
        "embedder": service.embedder.id,
        "memories": len(points),
        "document_chunks": await service.store.count(DOCUMENTS, scope),
        "superseded": sum(1 for h in points if h.payload.get("valid_to")),
    }


async def admin_gc(service: MemoryService, data: bytes) -> Any:
    """Operator only: one pass over every tenant (each tenant's deletes through its own scope)."""
    return await collect(
        service.store, msgspec.json.decode(data or b"{}", type=Gc), service.clock()
    )


async def admin_stats(service: MemoryService, data: bytes) -> Any:
    """Operator only: counts over every tenant."""
    points = await service.store.scroll_all(COLLECTION)
    docs = await service.store.scroll_all(DOCUMENTS)
    tenants = sorted({h.payload.get("tenant", "") for h in [*points, *docs]})
    return {
        "embedder": service.embedder.id,
        "memories": len(points),
        "document_chunks": len(docs),
        "tenants": len(tenants),
        "superseded": sum(1 for h in points if h.payload.get("valid_to")),
    }


async def sweep(service: MemoryService, settings: Settings) -> None:
    """The background garbage collection: a pass every RELAYBUS_MEMORY_GC_INTERVAL_S."""
    policy = policy_from(settings)
    interval_s = MemorySettings.of(settings).memory_gc_interval_s
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            report = await collect(service.store, policy, service.clock())
            if report["removed"]:
                log.info("memory gc removed %d memories", report["removed"])
        except RelayError as exc:  # an unreachable store must not end the service
            log.warning("memory gc pass failed: %s", exc)
