"""The Qdrant engine through `qdrant-client` (`AsyncQdrantClient`): a server at
RELAYBUS_QDRANT_URL, or the client's local mode (same API) for tests. The only module that
imports qdrant_client. The embedder id is part of the physical collection name, so vectors
from different embedders never share a collection.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from .engine import check_fields, check_vector, hybrid
from .keywords import KEYWORDS_VERSION, Sparse
from .store import TENANT, Hit, MemoryRefused, Scope, StoredPoint, owned


def _conditions(scope: Scope) -> list[models.Condition]:
    return [
        models.FieldCondition(key=k, match=models.MatchValue(value=v))
        for k, v in scope.conditions().items()
    ]


def _filter(scope: Scope) -> models.Filter:
    return models.Filter(must=_conditions(scope))


KEYWORDS = "keywords"


def _vector(point: StoredPoint) -> Any:
    if point.keywords is None:
        return {"": list(point.vector)}
    sparse = models.SparseVector(indices=point.keywords.indices, values=point.keywords.values)
    return {"": list(point.vector), KEYWORDS: sparse}


def _hit(point: Any, score: float = 1.0) -> Hit:
    vector = getattr(point, "vector", None)
    dense = vector.get("") if isinstance(vector, dict) else vector
    return Hit(
        id=str(point.id),
        score=float(score),
        payload=dict(point.payload or {}),
        vector=list(dense) if dense is not None else None,
    )


class QdrantStore:
    def __init__(self, client: AsyncQdrantClient) -> None:
        self.client = client
        self._physical: dict[str, tuple[str, int]] = {}

    @classmethod
    def connect(cls, url: str | None = None, path: str | None = None) -> QdrantStore:
        if url:
            return cls(AsyncQdrantClient(url=url))
        return cls(AsyncQdrantClient(path=path) if path else AsyncQdrantClient(location=":memory:"))

    def _name(self, collection: str) -> tuple[str, int]:
        found = self._physical.get(collection)
        if found is None:
            raise MemoryRefused(
                f"no collection {collection!r}; ingest into it or remember something first"
            )
        return found

    async def ensure_collection(self, name: str, dim: int, embedder: str) -> None:
        physical = f"{name}--{re.sub(r'[^A-Za-z0-9_-]', '_', embedder)}--{KEYWORDS_VERSION}"
        if not await self.client.collection_exists(physical):
            await self.client.create_collection(
                physical,
                vectors_config={"": models.VectorParams(size=dim, distance=models.Distance.COSINE)},
                sparse_vectors_config={
                    KEYWORDS: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
            )
            with warnings.catch_warnings():  # local mode says payload indexes do nothing there
                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
                for field in (TENANT, "kind"):
                    await self.client.create_payload_index(
                        physical, field, models.PayloadSchemaType.KEYWORD
                    )
        else:
            info = await self.client.get_collection(physical)
            vectors = info.config.params.vectors
            size = (vectors[""] if isinstance(vectors, dict) else vectors).size  # type: ignore[union-attr]
            if size != dim:
                raise MemoryRefused(
                    f"collection {physical} holds {size}-dimensional vectors, not {dim}"
                )
        self._physical[name] = (physical, dim)

    async def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None:
        physical, dim = self._name(collection)
        for point in points:
            check_vector(collection, point.vector, dim)
        await self.client.upsert(
            physical,
            points=[
                models.PointStruct(id=p.id, vector=_vector(p), payload=p.payload) for p in points
            ],
        )

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        scope: Scope,
        k: int,
        keywords: Sparse | None = None,
    ) -> list[Hit]:
        physical, dim = self._name(collection)
        check_vector(collection, vector, dim)
        where = _filter(scope)

        async def nearest(limit: int, ids: list[str] | None) -> list[Hit]:
            within = where
            if ids is not None:
                chosen: list[models.ExtendedPointId] = list(ids)
                within = models.Filter(
                    must=[*_conditions(scope), models.HasIdCondition(has_id=chosen)]
                )
            return await self._query(physical, list(vector), "", within, limit)

        async def by_keywords(limit: int) -> list[Hit]:
            assert keywords is not None
            sparse = models.SparseVector(indices=keywords.indices, values=keywords.values)
            return await self._query(physical, sparse, KEYWORDS, where, limit)

        use_keywords = keywords is not None and bool(keywords.indices)
        hits = await hybrid(nearest, by_keywords if use_keywords else None, k)
        return owned(hits, scope.tenant)

    async def _query(
        self, physical: str, query: Any, using: str, where: models.Filter, limit: int
    ) -> list[Hit]:
        found = await self.client.query_points(
            physical, query=query, using=using, query_filter=where, limit=limit, with_payload=True
        )
        return [_hit(p, p.score) for p in found.points]

    async def get(self, collection: str, ids: Sequence[str], scope: Scope) -> list[Hit]:
        physical, _ = self._name(collection)
        return owned(
            [_hit(p) for p in await self.client.retrieve(physical, list(ids), with_payload=True)],
            scope.tenant,
        )

    async def scroll(self, collection: str, scope: Scope, limit: int = 1000) -> list[Hit]:
        physical, _ = self._name(collection)
        points, _ = await self.client.scroll(
            physical, scroll_filter=_filter(scope), limit=limit, with_payload=True
        )
        return owned([_hit(p) for p in points], scope.tenant)

    async def scroll_all(
        self, collection: str, limit: int = 100_000, with_vectors: bool = False
    ) -> list[Hit]:
        physical, _ = self._name(collection)
        points, _ = await self.client.scroll(
            physical, limit=limit, with_payload=True, with_vectors=with_vectors
        )
        return [_hit(p) for p in points]

    async def delete(self, collection: str, scope: Scope, ids: Sequence[str] | None = None) -> int:
        physical, _ = self._name(collection)
        if ids is None:
            victims = [h.id for h in await self.scroll(collection, scope, limit=1_000_000)]
        else:
            victims = [h.id for h in await self.get(collection, ids, scope)]
        if victims:
            await self.client.delete(
                physical, points_selector=models.PointIdsList(points=list(victims))
            )
        return len(victims)

    async def set_fields(
        self, collection: str, scope: Scope, point: str, fields: dict[str, Any]
    ) -> bool:
        check_fields(fields)
        if not await self.get(collection, [point], scope):
            return False
        physical, _ = self._name(collection)
        await self.client.set_payload(physical, payload=fields, points=[point])
        return True

    async def count(self, collection: str, scope: Scope) -> int:
        physical, _ = self._name(collection)
        return int(
            (await self.client.count(physical, count_filter=_filter(scope), exact=True)).count
        )

    async def close(self) -> None:
        await self.client.close()
