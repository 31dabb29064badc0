"""The embedded engine: Qdrant Edge (`qdrant-edge-py`), one shard per collection under a folder.

The only module that imports qdrant_edge; the store interface itself is `engine.QdrantEngine`.
Shards are opened by this one process (the memory service); each collection's `Layout` (embedder
id, vector size, keyword hashing) is kept beside its shard, so vectors never mix.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import qdrant_edge as qe

from .engine import INDEXED, KEYWORDS, Layout, Opened, QdrantEngine, to_hit
from .keywords import Sparse
from .store import Hit, MemoryRefused, Scope, StoredPoint

LAYOUT_FILE = "relaybus.json"


class EdgeStore(QdrantEngine[qe.EdgeShard]):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self._lock = asyncio.Lock()

    def _reopen(self, name: str) -> Opened[qe.EdgeShard] | None:
        path = self.root / name
        if not (path / LAYOUT_FILE).exists():
            return None
        dim = json.loads((path / LAYOUT_FILE).read_text())["dim"]
        return Opened(qe.EdgeShard.load(str(path / "shard")), dim)

    async def ensure_collection(self, name: str, dim: int, embedder: str) -> None:
        async with self._lock:
            path = self.root / name
            layout_path = path / LAYOUT_FILE
            wanted = Layout(dim=dim, embedder=embedder)
            if layout_path.exists():
                found = json.loads(layout_path.read_text())
                if found != msgspec.structs.asdict(wanted):
                    built = Layout(
                        dim=found.get("dim"),
                        embedder=found.get("embedder"),
                        keywords=found.get("keywords"),
                    )
                    raise MemoryRefused(
                        f"collection {name} was built with {built.describe()}, not "
                        f"{wanted.describe()}; vectors must not mix: use another RELAYBUS_HOME "
                        "or re-ingest"
                    )
                self._collection(name)
                return
            path.mkdir(parents=True, exist_ok=True)
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
                sparse_vectors={KEYWORDS: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            )
            shard = qe.EdgeShard.create(str(path / "shard"), config)
            for field in INDEXED:
                shard.update(
                    qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword)
                )
            layout_path.write_text(json.dumps(msgspec.structs.asdict(wanted)))
            self._register(name, shard, dim)

    def _filter(self, scope: Scope, ids: Sequence[str] | None = None) -> qe.Filter:
        must: list[Any] = [
            qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in scope.conditions().items()
        ]
        if ids is not None:
            must.append(qe.HasIdCondition(set(ids)))
        return qe.Filter(must=must)

    def _sparse(self, keywords: Sparse) -> qe.SparseVector:
        return qe.SparseVector(keywords.indices, keywords.values)

    async def _upsert(self, handle: qe.EdgeShard, points: Sequence[StoredPoint]) -> None:
        handle.update(
            qe.UpdateOperation.upsert_points(
                [qe.Point(id=p.id, vector=self._vectors(p), payload=p.payload) for p in points]
            )
        )
        handle.flush()

    async def _query(
        self, handle: qe.EdgeShard, query: Any, using: str, where: Any, limit: int
    ) -> list[Hit]:
        nearest = qe.Query.Nearest(query, using=using or None)  # the unnamed vector is None here
        found = handle.query(
            qe.QueryRequest(limit=limit, query=nearest, filter=where, with_payload=True)
        )
        return [to_hit(p, p.score) for p in found]

    async def _retrieve(self, handle: qe.EdgeShard, ids: list[str]) -> list[Hit]:
        records = handle.retrieve(list[Any](ids), with_payload=True, with_vector=False)
        return [to_hit(p) for p in records]

    async def _scroll(
        self, handle: qe.EdgeShard, where: Any | None, limit: int, with_vectors: bool
    ) -> list[Hit]:
        records, _ = handle.scroll(
            qe.ScrollRequest(limit=limit, filter=where, with_payload=True, with_vector=with_vectors)
        )
        return [to_hit(p) for p in records]

    async def _delete(self, handle: qe.EdgeShard, ids: list[str]) -> None:
        handle.update(qe.UpdateOperation.delete_points(list[Any](ids)))
        handle.flush()

    async def _set_payload(self, handle: qe.EdgeShard, point: str, fields: dict[str, Any]) -> None:
        handle.update(qe.UpdateOperation.set_payload([point], fields))
        handle.flush()

    async def _count(self, handle: qe.EdgeShard, where: Any) -> int:
        return int(handle.count(qe.CountRequest(exact=True, filter=where)))

    async def close(self) -> None:
        for opened in self._opened.values():
            opened.handle.flush()
            opened.handle.close()
        self._opened.clear()
