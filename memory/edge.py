"""The embedded engine: Qdrant Edge (`qdrant-edge-py`), one shard per collection under a folder.

The only module that imports qdrant_edge. Shards are opened by this one process (the memory
service); the embedder id and vector size are kept beside each shard so vectors never mix.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from .keywords import KEYWORDS_VERSION, Sparse
from .store import (
    TENANT,
    Hit,
    MemoryRefused,
    Scope,
    StoredPoint,
    check_fields,
    check_vector,
    hybrid,
    owned,
)


def _conditions(scope: Scope) -> list[Any]:
    return [qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in scope.conditions().items()]


def _filter(scope: Scope) -> qe.Filter:
    return qe.Filter(must=_conditions(scope))


KEYWORDS = "keywords"


def _vector(point: StoredPoint) -> Any:
    if point.keywords is None:
        return {"": list(point.vector)}
    sparse = qe.SparseVector(point.keywords.indices, point.keywords.values)
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


class EdgeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._shards: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    def _open(self, name: str) -> Any:
        shard = self._shards.get(name)
        if shard is None:
            path = self.root / name
            if not (path / "relaybus.json").exists():
                raise MemoryRefused(
                    f"no collection {name!r}; ingest into it or remember something first"
                )
            self._meta[name] = json.loads((path / "relaybus.json").read_text())
            shard = self._shards[name] = qe.EdgeShard.load(str(path / "shard"))
        return shard

    async def ensure_collection(self, name: str, dim: int, embedder: str) -> None:
        async with self._lock:
            path = self.root / name
            meta_path = path / "relaybus.json"
            wanted = {"dim": dim, "embedder": embedder, "keywords": KEYWORDS_VERSION}
            if meta_path.exists():
                meta = json.loads(meta_path.read_text())
                if meta != wanted:
                    raise MemoryRefused(
                        f"collection {name} was built with {meta.get('embedder')} "
                        f"({meta.get('dim')} dims, keywords {meta.get('keywords')}), not "
                        f"{embedder} ({dim} dims, keywords {KEYWORDS_VERSION}); vectors must not "
                        "mix: use another RELAYBUS_HOME or re-ingest"
                    )
                self._open(name)
                return
            path.mkdir(parents=True, exist_ok=True)
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
                sparse_vectors={KEYWORDS: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            )
            shard = qe.EdgeShard.create(str(path / "shard"), config)
            shard.update(
                qe.UpdateOperation.create_field_index(TENANT, qe.PayloadSchemaType.Keyword)
            )
            shard.update(
                qe.UpdateOperation.create_field_index("kind", qe.PayloadSchemaType.Keyword)
            )
            meta_path.write_text(json.dumps(wanted))
            self._shards[name], self._meta[name] = shard, wanted

    async def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None:
        shard = self._open(collection)
        for point in points:
            check_vector(collection, point.vector, self._meta[collection]["dim"])
        shard.update(
            qe.UpdateOperation.upsert_points(
                [qe.Point(id=p.id, vector=_vector(p), payload=p.payload) for p in points]
            )
        )
        shard.flush()

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        scope: Scope,
        k: int,
        keywords: Sparse | None = None,
    ) -> list[Hit]:
        shard = self._open(collection)
        check_vector(collection, vector, self._meta[collection]["dim"])
        where = _filter(scope)

        async def nearest(limit: int, ids: list[str] | None) -> list[Hit]:
            within = where
            if ids is not None:
                within = qe.Filter(must=[*_conditions(scope), qe.HasIdCondition(set(ids))])
            return self._query(shard, qe.Query.Nearest(list(vector)), within, limit)

        async def by_keywords(limit: int) -> list[Hit]:
            assert keywords is not None
            sparse = qe.SparseVector(keywords.indices, keywords.values)
            return self._query(shard, qe.Query.Nearest(sparse, using=KEYWORDS), where, limit)

        use_keywords = keywords is not None and bool(keywords.indices)
        hits = await hybrid(nearest, by_keywords if use_keywords else None, k)
        return owned(hits, scope.tenant)

    @staticmethod
    def _query(shard: Any, query: Any, where: qe.Filter, limit: int) -> list[Hit]:
        found = shard.query(
            qe.QueryRequest(limit=limit, query=query, filter=where, with_payload=True)
        )
        return [_hit(p, p.score) for p in found]

    async def get(self, collection: str, ids: Sequence[str], scope: Scope) -> list[Hit]:
        shard = self._open(collection)
        return owned(
            [_hit(p) for p in shard.retrieve(list(ids), with_payload=True, with_vector=False)],
            scope.tenant,
        )

    async def scroll(self, collection: str, scope: Scope, limit: int = 1000) -> list[Hit]:
        shard = self._open(collection)
        records, _ = shard.scroll(
            qe.ScrollRequest(limit=limit, filter=_filter(scope), with_payload=True)
        )
        return owned([_hit(p) for p in records], scope.tenant)

    async def scroll_all(
        self, collection: str, limit: int = 100_000, with_vectors: bool = False
    ) -> list[Hit]:
        records, _ = self._open(collection).scroll(
            qe.ScrollRequest(limit=limit, with_payload=True, with_vector=with_vectors)
        )
        return [_hit(p) for p in records]

    async def delete(self, collection: str, scope: Scope, ids: Sequence[str] | None = None) -> int:
        shard = self._open(collection)
        if ids is None:
            victims = [h.id for h in await self.scroll(collection, scope, limit=1_000_000)]
        else:  # only ids this tenant owns: guessing another tenant's id deletes nothing
            victims = [h.id for h in await self.get(collection, ids, scope)]
        if victims:
            shard.update(qe.UpdateOperation.delete_points(list[Any](victims)))
            shard.flush()
        return len(victims)

    async def set_fields(
        self, collection: str, scope: Scope, point: str, fields: dict[str, Any]
    ) -> bool:
        check_fields(fields)
        if not await self.get(collection, [point], scope):
            return False
        shard = self._open(collection)
        shard.update(qe.UpdateOperation.set_payload([point], fields))
        shard.flush()
        return True

    async def count(self, collection: str, scope: Scope) -> int:
        return int(self._open(collection).count(qe.CountRequest(exact=True, filter=_filter(scope))))

    async def close(self) -> None:
        for shard in self._shards.values():
            shard.flush()
            shard.close()
        self._shards.clear()
