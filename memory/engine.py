"""What the two Qdrant engines share: the store interface implemented once over a few calls of
the client library.

`QdrantEngine` does the checks (vector size, reserved fields), the tenant filter on every scoped
call, the hybrid search and the re-check of each hit's tenant; an engine (`edge.EdgeStore`,
`qdrant.QdrantStore`) opens its collections and supplies the primitives (`_query`, `_retrieve`,
`_scroll`, …), which take a filter the engine built from a `Scope` and know nothing of tenants.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from relaybus.memory.errors import MemoryRefused

from .keywords import KEYWORDS_VERSION, Sparse
from .store import RESERVED, TENANT, Hit, Scope, StoredPoint, owned

DENSE = ""  # the embedder's vector: Qdrant's unnamed (default) vector
KEYWORDS = "keywords"  # the sparse BM25 vector (`relaybus.memory.keywords`), IDF applied by Qdrant
INDEXED = (TENANT, "kind")  # payload fields with a keyword index
KEYWORD_WEIGHT = 0.1  # measured best on benchmarks/recall.py (0.05-0.2 within 0.01)
CANDIDATES = 4  # each ranking contributes k * CANDIDATES candidates


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    """What a collection's vectors are. Kept with the collection, so that vectors of two
    embedders (or two keyword hashings) never share one."""

    dim: int
    embedder: str
    keywords: str = KEYWORDS_VERSION

    def describe(self) -> str:
        return f"{self.embedder} ({self.dim} dims, keywords {self.keywords})"


Handle = TypeVar("Handle")  # how the engine addresses an open collection


@dataclass(frozen=True)
class Opened(Generic[Handle]):
    handle: Handle
    dim: int


def to_hit(point: Any, score: float = 1.0) -> Hit:
    """A hit from a point or record of either client library (same attribute names)."""
    vector = getattr(point, "vector", None)
    dense = vector.get(DENSE) if isinstance(vector, dict) else vector
    return Hit(
        id=str(point.id),
        score=float(score),
        payload=dict(point.payload or {}),
        vector=list(dense) if dense is not None else None,
    )


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


def fuse(dense: Sequence[Hit], keyword: Sequence[Hit], k: int) -> list[Hit]:
    """Convex fusion: cosine + KEYWORD_WEIGHT * (BM25 score / best BM25 score).

    `dense` must carry the cosine score of every keyword candidate too (`hybrid` rescores the
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
    """Dense only, or dense and keyword candidates fused, with the cosine of keyword-only
    candidates fetched by id. `nearest(limit, ids)` is the dense search (within `ids` when
    given), `by_keywords(limit)` the sparse one."""
    if by_keywords is None:
        return await nearest(k, None)
    dense = await nearest(k * CANDIDATES, None)
    keyword = await by_keywords(k * CANDIDATES)
    seen = {h.id for h in dense}
    missing = [h.id for h in keyword if h.id not in seen]
    if missing:
        dense += await nearest(len(missing), missing)
    return fuse(dense, keyword, k)


class QdrantEngine(ABC, Generic[Handle]):
    """`VectorStore` for an engine that can open collections and run the primitives below."""

    def __init__(self) -> None:
        self._opened: dict[str, Opened[Handle]] = {}

    def _register(self, name: str, handle: Handle, dim: int) -> None:
        self._opened[name] = Opened(handle, dim)

    def _collection(self, name: str) -> Opened[Handle]:
        opened = self._opened.get(name) or self._reopen(name)
        if opened is None:
            raise MemoryRefused(
                f"no collection {name!r}; ingest into it or remember something first"
            )
        self._opened[name] = opened
        return opened

    # --- what each engine supplies -------------------------------------------------------

    @abstractmethod
    async def ensure_collection(self, name: str, dim: int, embedder: str) -> None:
        """Create or reopen `name` for `Layout(dim, embedder)`, refusing (MemoryRefused) one
        built for another layout; then `_register` it."""

    def _reopen(self, name: str) -> Opened[Handle] | None:
        """A collection this process has not ensured yet, if the engine can find it alone."""
        return None

    @abstractmethod
    def _filter(self, scope: Scope, ids: Sequence[str] | None = None) -> Any:
        """The engine's filter: every condition of `scope.conditions()`, within `ids` if given."""

    @abstractmethod
    def _sparse(self, keywords: Sparse) -> Any: ...

    @abstractmethod
    async def _upsert(self, handle: Handle, points: Sequence[StoredPoint]) -> None:
        """Store the points, each with `self._vectors(point)`."""

    @abstractmethod
    async def _query(
        self, handle: Handle, query: Any, using: str, where: Any, limit: int
    ) -> list[Hit]:
        """Nearest to `query` (a dense list, or `_sparse`) by the vector named `using`."""

    @abstractmethod
    async def _retrieve(self, handle: Handle, ids: list[str]) -> list[Hit]: ...

    @abstractmethod
    async def _scroll(
        self, handle: Handle, where: Any | None, limit: int, with_vectors: bool
    ) -> list[Hit]: ...

    @abstractmethod
    async def _delete(self, handle: Handle, ids: list[str]) -> None: ...

    @abstractmethod
    async def _set_payload(self, handle: Handle, point: str, fields: dict[str, Any]) -> None: ...

    @abstractmethod
    async def _count(self, handle: Handle, where: Any) -> int: ...

    @abstractmethod
    async def close(self) -> None: ...

    # --- the store interface, the same for every engine ----------------------------------

    def _vectors(self, point: StoredPoint) -> dict[str, Any]:
        if point.keywords is None:
            return {DENSE: list(point.vector)}
        return {DENSE: list(point.vector), KEYWORDS: self._sparse(point.keywords)}

    async def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None:
        opened = self._collection(collection)
        for point in points:
            check_vector(collection, point.vector, opened.dim)
        await self._upsert(opened.handle, points)

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        scope: Scope,
        k: int,
        keywords: Sparse | None = None,
    ) -> list[Hit]:
        opened = self._collection(collection)
        check_vector(collection, vector, opened.dim)
        where = self._filter(scope)

        async def nearest(limit: int, ids: list[str] | None) -> list[Hit]:
            within = where if ids is None else self._filter(scope, ids)
            return await self._query(opened.handle, list(vector), DENSE, within, limit)

        async def by_keywords(limit: int) -> list[Hit]:
            assert keywords is not None
            return await self._query(opened.handle, self._sparse(keywords), KEYWORDS, where, limit)

        use_keywords = keywords is not None and bool(keywords.indices)
        hits = await hybrid(nearest, by_keywords if use_keywords else None, k)
        return owned(hits, scope.tenant)

    async def get(self, collection: str, ids: Sequence[str], scope: Scope) -> list[Hit]:
        opened = self._collection(collection)
        return owned(await self._retrieve(opened.handle, list(ids)), scope.tenant)

    async def scroll(self, collection: str, scope: Scope, limit: int = 1000) -> list[Hit]:
        opened = self._collection(collection)
        hits = await self._scroll(opened.handle, self._filter(scope), limit, False)
        return owned(hits, scope.tenant)

    async def scroll_all(
        self, collection: str, limit: int = 100_000, with_vectors: bool = False
    ) -> list[Hit]:
        return await self._scroll(self._collection(collection).handle, None, limit, with_vectors)

    async def delete(self, collection: str, scope: Scope, ids: Sequence[str] | None = None) -> int:
        opened = self._collection(collection)
        if ids is None:
            victims = [h.id for h in await self.scroll(collection, scope, limit=1_000_000)]
        else:  # only ids this tenant owns: guessing another tenant's id deletes nothing
            victims = [h.id for h in await self.get(collection, ids, scope)]
        if victims:
            await self._delete(opened.handle, victims)
        return len(victims)

    async def set_fields(
        self, collection: str, scope: Scope, point: str, fields: dict[str, Any]
    ) -> bool:
        check_fields(fields)
        if not await self.get(collection, [point], scope):
            return False
        await self._set_payload(self._collection(collection).handle, point, fields)
        return True

    async def count(self, collection: str, scope: Scope) -> int:
        opened = self._collection(collection)
        return await self._count(opened.handle, self._filter(scope))
