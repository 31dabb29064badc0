"""Long-term memory, RAG and session state over Qdrant.

This layer so far: the store interface (`store`), its two engines — Qdrant Edge embedded
(`edge`, the default) and a Qdrant server or local mode through qdrant-client (`qdrant`) — and the
zero-dependency lexical embedder (`embed`). The memory service and `ctx.memory` build on these.
"""

from .embed import Embedder, LexicalEmbedder
from .store import Hit, MemoryRefused, Scope, StoredPoint, VectorStore, point_id

__all__ = [
    "Embedder",
    "Hit",
    "LexicalEmbedder",
    "MemoryRefused",
    "Scope",
    "StoredPoint",
    "VectorStore",
    "point_id",
]
