"""The store interface every engine implements, and the one place tenant filters are built.

Every read and delete takes a tenant; engines only ever query through `Scope`, which always
carries it. Point ids derive from tenant + kind + content, so one tenant cannot address another's
points by guessing, and every hit's tenant is re-checked before it is returned.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from relaybus.memory.errors import MemoryRefused

from .keywords import Sparse

TENANT = "tenant"
RESERVED = frozenset({TENANT, "kind", "text", "hash"})


class StoredPoint(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    vector: list[float]
    payload: dict[str, Any]
    keywords: Sparse | None = None  # BM25 term weights, for hybrid search


class Hit(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    score: float
    payload: dict[str, Any]
    vector: list[float] | None = None  # only when asked for (garbage collection)


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking (the tenant, from the verified chain) and what else must match."""

    tenant: str
    equals: dict[str, str | int | bool] = {}

    def __post_init__(self) -> None:
        if not self.tenant:
            raise MemoryRefused("a memory operation needs a tenant")
        bad = RESERVED & set(self.equals) - {"kind"}
        if bad:
            raise MemoryRefused(
                f"filters may not set {sorted(bad)}; the tenant comes from the chain"
            )

    def conditions(self) -> dict[str, str | int | bool]:
        """The exact-match conditions engines must apply — the tenant always among them."""
        return {**self.equals, TENANT: self.tenant}


def point_id(tenant: str, kind: str, text: str) -> str:
    """Deterministic id from tenant + kind + content (a UUID, as Qdrant wants)."""
    digest = hashlib.sha256(f"{tenant}\x1f{kind}\x1f{text}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16]))


KEYWORD_WEIGHT = 0.1  # measured best on benchmarks/recall.py (0.05-0.2 within 0.01)
CANDIDATES = 4  # each ranking contributes k * CANDIDATES candidates


def fuse(dense: Sequence[Hit], keyword: Sequence[Hit], k: int) -> list[Hit]:
    """Convex fusion: cosine + KEYWORD_WEIGHT * (BM25 score / best BM25 score).

    `dense` must carry the cosine score of every keyword candidate too (engines rescore the
    candidates only the keyword ranking found). The dense model decides among close matches; the
    keyword bonus lifts exact names and codes a sentence model blurs. Rank fusion (RRF) was
    measured worse: it lets the keyword ranking's length-normalisation noise reorder facts the
    dense model had right (recall@1 on paraphrases 0.28 vs 0.70).
    """
    best = max((h.score for h in keyword), default=0.0) or 1.0
    bonus = {h.id: KEYWORD_WEIGHT * h.score / best for h in keyword}
    scored = {
        h.id: Hit(id=h.id, score=h.score + bonus.get(h.id, 0.0), payload=h.payload) for h in dense
    }
    return sorted(scored.values(), key=lambda h: h.score, reverse=True)[:k]


Nearest = Callable[[int, list[str] | None], Awaitable[list[Hit]]]
ByKeywords = Callable[[int], Awaitable[list[Hit]]]


async def hybrid(nearest: Nearest, by_keywords: ByKeywords | None, k: int) -> list[Hit]:
    """The search every engine runs: dense only, or dense and keyword candidates fused, with
    the cosine of keyword-only candidates fetched by id. `nearest(limit, ids)` is the engine's
    dense search (within `ids` when given), `by_keywords(limit)` its sparse one."""
    if by_keywords is None:
        return await nearest(k, None)
    dense = await nearest(k * CANDIDATES, None)
    keyword = await by_keywords(k * CANDIDATES)
    seen = {h.id for h in dense}
    missing = [h.id for h in keyword if h.id not in seen]
    if missing:
        dense += await nearest(len(missing), missing)
    return fuse(dense, keyword, k)


def owned(hits: Sequence[Hit], tenant: str) -> list[Hit]:
    """Drop any hit whose payload names another tenant (defence in depth)."""
    return [h for h in hits if h.payload.get(TENANT) == tenant]


class VectorStore(Protocol):
    async def ensure_collection(self, name: str, dim: int, embedder: str) -> None: ...

    async def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None: ...

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        scope: Scope,
        k: int,
        keywords: Sparse | None = None,
    ) -> list[Hit]:
        """Nearest by `vector`; with `keywords`, dense and keyword candidates fused (`fuse`)."""
        ...

    async def get(self, collection: str, ids: Sequence[str], scope: Scope) -> list[Hit]: ...

    async def scroll(self, collection: str, scope: Scope, limit: int = 1000) -> list[Hit]: ...

    async def delete(
        self, collection: str, scope: Scope, ids: Sequence[str] | None = None
    ) -> int: ...

    async def count(self, collection: str, scope: Scope) -> int: ...

    async def set_fields(
        self, collection: str, scope: Scope, point: str, fields: dict[str, Any]
    ) -> bool:
        """Merge `fields` into one point's payload if the scope's tenant owns it; never the
        tenant, kind or text (see RESERVED)."""
        ...

    async def scroll_all(
        self, collection: str, limit: int = 100_000, with_vectors: bool = False
    ) -> list[Hit]:
        """Every tenant's points: for the service's own garbage collection only."""
        ...

    async def close(self) -> None: ...


def check_vector(collection: str, vector: Sequence[float], dim: int) -> None:
    if len(vector) != dim:
        raise MemoryRefused(
            f"collection {collection} holds {dim}-dimensional vectors, got {len(vector)}: "
            "is the embedder misconfigured?"
        )


def check_fields(fields: Mapping[str, Any]) -> None:
    bad = RESERVED & set(fields)
    if bad:
        raise MemoryRefused(f"fields {sorted(bad)} of a stored memory cannot be changed")


def check_payload(payload: Mapping[str, Any], tenant: str) -> None:
    if payload.get(TENANT) != tenant:
        raise MemoryRefused("a point's payload must carry its tenant")
