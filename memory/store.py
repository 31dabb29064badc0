"""The store interface every engine implements, and the one place tenant filters are built.

Every read and delete takes a tenant; engines only ever query through `Scope`, which always
carries it. Point ids derive from tenant + kind + content, so one tenant cannot address another's
points by guessing, and every hit's tenant is re-checked before it is returned.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
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
        """Nearest by `vector`; with `keywords`, dense and keyword candidates fused
        (`relaybus.memory.engine.fuse`)."""
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


def check_payload(payload: Mapping[str, Any], tenant: str) -> None:
    if payload.get(TENANT) != tenant:
        raise MemoryRefused("a point's payload must carry its tenant")
