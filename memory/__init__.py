"""Long-term memory, RAG and session state over Qdrant.

The store interface (`store`) and its two engines — Qdrant Edge embedded (`edge`, the default) and
a Qdrant server or local mode through qdrant-client (`qdrant`), both built on what they share
(`engine`); embedders (`embed`, `minilm`) and keyword vectors (`keywords`) for hybrid search; the
memory service (`service`) that owns the store, its garbage collection (`gc`), and `MemoryClient`,
which agents reach as `ctx.memory`.
"""

if __name__ != "relaybus.memory":  # the checkout's folder imported by its own name
    raise ImportError(
        "relaybus's memory/ folder is the package relaybus.memory: import relaybus.memory, "
        "not memory (`from relaybus import ...`; run its modules as `python -m relaybus.memory...`)"
    )

from typing import TYPE_CHECKING

from relaybus.bus.lazy import exports

if TYPE_CHECKING:
    from .client import MemoryClient
    from .embed import Embedder, LexicalEmbedder
    from .store import Hit, MemoryRefused, Scope, StoredPoint, VectorStore, point_id

__getattr__ = exports(
    __name__,
    {
        ".client": ["MemoryClient"],
        ".embed": ["Embedder", "LexicalEmbedder"],
        ".store": ["Hit", "MemoryRefused", "Scope", "StoredPoint", "VectorStore", "point_id"],
    },
)

__all__ = [
    "Embedder",
    "Hit",
    "LexicalEmbedder",
    "MemoryClient",
    "MemoryRefused",
    "Scope",
    "StoredPoint",
    "VectorStore",
    "point_id",
]
