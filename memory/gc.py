"""Garbage collection of long-term memory: what goes, and why.

Four rules, applied in order, tenant by tenant (every delete goes through the tenant's scope):

1. superseded facts older than the retention window;
2. memories older than their kind's TTL;
3. near-duplicates: of two current memories of one kind whose vectors are at least
   `duplicate_score` alike, the weaker goes (its `seen` count is folded into the survivor);
4. the cap: a tenant over `cap` current memories loses the weakest, where strength is
   times seen x 0.5 ** (age since last seen / half-life).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from relaybus.bus import ConfigError, Settings
from relaybus.memory.errors import MemoryRefused
from relaybus.memory.settings import MemorySettings

from .messages import Gc
from .store import Hit, Scope, VectorStore, owned

COLLECTION = "memories"


def parse_ttl(items: list[str], source: str = "--ttl") -> dict[str, float]:
    """`["scratch=1", "session_summary=90"]` (KIND=DAYS) → seconds per kind."""
    ttl: dict[str, float] = {}
    for item in items:
        kind, eq, days = item.strip().partition("=")
        try:
            ttl[kind] = float(days) * 86400
        except ValueError:
            eq = ""
        if not eq or not kind:
            raise MemoryRefused(f"{source} {item!r} must be KIND=DAYS, e.g. scratch=1")
    return ttl


def policy_from(settings: Settings) -> Gc:
    """The background pass's policy, from the RELAYBUS_MEMORY_* settings."""
    memory = MemorySettings.of(settings)
    items = [i for i in memory.memory_ttl.split(",") if i.strip()]
    try:
        ttl = parse_ttl(items, "RELAYBUS_MEMORY_TTL")
    except MemoryRefused as exc:
        raise ConfigError(str(exc)) from None
    return Gc(
        dry_run=False,
        retention_s=memory.memory_retention_days * 86400,
        ttl_s=ttl,
        cap=memory.memory_cap,
        half_life_s=memory.memory_half_life_days * 86400,
        duplicate_score=memory.memory_duplicate_score,
    )


def strength(payload: dict[str, Any], now: float, half_life_s: float) -> float:
    last = float(payload.get("last_seen") or payload.get("valid_from") or now)
    return int(payload.get("seen", 1)) * 0.5 ** (max(0.0, now - last) / half_life_s)


async def collect(
    store: VectorStore, policy: Gc, now: float, tenant: str | None = None
) -> dict[str, Any]:
    """One pass; with `tenant`, over that tenant's memories only (a tenant's own `gc`)."""
    points = await store.scroll_all(COLLECTION, with_vectors=policy.duplicate_score > 0)
    if tenant is not None:
        points = owned(points, tenant)
    doomed: dict[str, str] = {}  # id -> reason
    tenants: dict[str, list[Hit]] = defaultdict(list)
    for hit in points:
        p = hit.payload
        if p.get("valid_to") and now - p["valid_to"] > policy.retention_s:
            doomed[hit.id] = "superseded past retention"
        elif (
            p.get("kind") in policy.ttl_s
            and now - p.get("valid_from", now) > policy.ttl_s[p["kind"]]
        ):
            doomed[hit.id] = f"older than the {p['kind']} TTL"
        elif not p.get("valid_to"):
            tenants[p["tenant"]].append(hit)
    folded: dict[str, tuple[Hit, int]] = {}  # survivor id -> (hit, extra seen)
    if policy.duplicate_score > 0:
        for tenant, hits in tenants.items():
            for hit in hits:
                if hit.id in doomed or hit.vector is None:
                    continue
                scope = Scope(tenant=tenant, equals={"kind": hit.payload["kind"]})
                for near in await store.search(COLLECTION, hit.vector, scope, 3):
                    if (
                        near.id == hit.id
                        or near.id in doomed
                        or near.score < policy.duplicate_score
                    ):
                        continue
                    if near.payload.get("valid_to"):
                        continue
                    keep, drop = sorted(
                        (hit, near),
                        key=lambda h: (strength(h.payload, now, policy.half_life_s), h.id),
                        reverse=True,
                    )
                    doomed[drop.id] = f"near-duplicate of {keep.id} ({near.score:.3f})"
                    base, extra = folded.get(keep.id, (keep, 0))
                    folded[keep.id] = (base, extra + int(drop.payload.get("seen", 1)))
                    if drop.id == hit.id:
                        break
    if policy.cap > 0:
        for hits in tenants.values():
            alive = [h for h in hits if h.id not in doomed]
            alive.sort(key=lambda h: (strength(h.payload, now, policy.half_life_s), h.id))
            for hit in alive[: max(0, len(alive) - policy.cap)]:
                doomed[hit.id] = f"over the cap of {policy.cap} (weakest)"
    by_id = {h.id: h for h in points}
    candidates = [
        {
            "id": pid,
            "tenant": by_id[pid].payload["tenant"],
            "kind": by_id[pid].payload.get("kind"),
            "text": by_id[pid].payload.get("text", "")[:120],
            "reason": why,
        }
        for pid, why in doomed.items()
    ]
    removed = 0
    if not policy.dry_run:
        for hit, extra in folded.values():
            if hit.id not in doomed:
                seen = int(hit.payload.get("seen", 1)) + extra
                scope = Scope(tenant=hit.payload["tenant"])
                await store.set_fields(COLLECTION, scope, hit.id, {"seen": seen})
        per_tenant: dict[str, list[str]] = defaultdict(list)
        for c in candidates:
            per_tenant[c["tenant"]].append(c["id"])
        for tenant, ids in per_tenant.items():
            removed += await store.delete(COLLECTION, Scope(tenant=tenant), ids)
    return {"dry_run": policy.dry_run, "candidates": candidates, "removed": removed}
