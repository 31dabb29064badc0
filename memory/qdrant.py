"""The Qdrant engine through `qdrant-client` (`AsyncQdrantClient`): a server at
RELAYBUS_QDRANT_URL, or the client's local mode (same API) for tests. The only module that
imports qdrant_client; the store interface itself is `engine.QdrantEngine`. The embedder id and
keyword hashing are part of the physical collection name, so vectors from different embedders
never share a collection.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from .engine import DENSE, INDEXED, KEYWORDS, Layout, QdrantEngine, to_hit
from .keywords import Sparse
from .store import Hit, MemoryRefused, Scope, StoredPoint


def physical_name(name: str, layout: Layout) -> str:
    return f"{name}--{re.sub(r'[^A-Za-z0-9_-]', '_', layout.embedder)}--{layout.keywords}"


class QdrantStore(QdrantEngine[str]):
    """Collections are addressed by their physical name."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        super().__init__()
        self.client = client

    @classmethod
    def connect(cls, url: str | None = None, path: str | None = None) -> QdrantStore:
        if url:
            return cls(AsyncQdrantClient(url=url))
        return cls(AsyncQdrantClient(path=path) if path else AsyncQdrantClient(location=":memory:"))

    async def ensure_collection(self, name: str, dim: int, embedder: str) -> None:
        physical = physical_name(name, Layout(dim=dim, embedder=embedder))
        if not await self.client.collection_exists(physical):
            await self.client.create_collection(
                physical,
                vectors_config={
                    DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)
                },
                sparse_vectors_config={
                    KEYWORDS: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
            )
            with warnings.catch_warnings():  # local mode says payload indexes do nothing there
                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
                for field in INDEXED:
                    await self.client.create_payload_index(
                        physical, field, models.PayloadSchemaType.KEYWORD
                    )
        else:
            info = await self.client.get_collection(physical)
            vectors = info.config.params.vectors
            size = (vectors[DENSE] if isinstance(vectors, dict) else vectors).size  # type: ignore[union-attr]
            if size != dim:
                raise MemoryRefused(
                    f"collection {physical} holds {size}-dimensional vectors, not {dim}"
                )
        self._register(name, physical, dim)

    def _filter(self, scope: Scope, ids: Sequence[str] | None = None) -> models.Filter:
        must: list[models.Condition] = [
            models.FieldCondition(key=k, match=models.MatchValue(value=v))
            for k, v in scope.conditions().items()
        ]
        if ids is not None:
            chosen: list[models.ExtendedPointId] = list(ids)
            must.append(models.HasIdCondition(has_id=chosen))
        return models.Filter(must=must)

    def _sparse(self, keywords: Sparse) -> models.SparseVector:
        return models.SparseVector(indices=keywords.indices, values=keywords.values)

    async def _upsert(self, handle: str, points: Sequence[StoredPoint]) -> None:
        await self.client.upsert(
            handle,
            points=[
                models.PointStruct(id=p.id, vector=self._vectors(p), payload=p.payload)
                for p in points
            ],
        )

    async def _query(
        self, handle: str, query: Any, using: str, where: Any, limit: int
    ) -> list[Hit]:
        found = await self.client.query_points(
            handle, query=query, using=using, query_filter=where, limit=limit, with_payload=True
        )
        return [to_hit(p, p.score) for p in found.points]

    async def _retrieve(self, handle: str, ids: list[str]) -> list[Hit]:
        chosen: list[models.ExtendedPointId] = list(ids)
        return [to_hit(p) for p in await self.client.retrieve(handle, chosen, with_payload=True)]

    async def _scroll(
        self, handle: str, where: Any | None, limit: int, with_vectors: bool
    ) -> list[Hit]:
        points, _ = await self.client.scroll(
            handle, scroll_filter=where, limit=limit, with_payload=True, with_vectors=with_vectors
        )
        return [to_hit(p) for p in points]

    async def _delete(self, handle: str, ids: list[str]) -> None:
        chosen: list[models.ExtendedPointId] = list(ids)
        await self.client.delete(handle, points_selector=models.PointIdsList(points=chosen))

    async def _set_payload(self, handle: str, point: str, fields: dict[str, Any]) -> None:
        await self.client.set_payload(handle, payload=fields, points=[point])

    async def _count(self, handle: str, where: Any) -> int:
        return int((await self.client.count(handle, count_filter=where, exact=True)).count)

    async def close(self) -> None:
        await self.client.close()
