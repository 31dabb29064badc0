"""Documents for retrieval: paragraph-aware chunking with overlap, and the service's `ingest` and
`search_docs` operations.

`ingest` works in bounded steps: each request embeds at most `limit` new chunks, for about
`budget_s`, stores them, and says how many are still pending; the client repeats the request
until none are. A chunk's id derives from tenant + collection + source + its text, so a step
that is repeated (after a timeout) or an ingest run again stores nothing twice, and an ingest
that stopped half-way continues with only the chunks still missing.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .keywords import document_keywords, query_keywords
from .messages import Ingest, SearchDocs
from .store import MemoryRefused, Scope, StoredPoint, point_id

if TYPE_CHECKING:
    from .service import MemoryService

DOCUMENTS = "documents"
CHUNK_CHARS = 800
OVERLAP_CHARS = 120
MAX_STEP_CHUNKS = 64  # chunks one ingest request embeds at most, whatever it asks
MAX_STEP_S = 2.0  # and about how long it may embed for
EMBED_STEP = 8  # chunks embedded and stored between checks of a step's limit and budget
MAX_CHUNKS = 100_000  # of one source


def chunk(text: str, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[str]:
    """Paragraph-aware chunks of about `size` characters, each starting with the last
    `overlap` characters of the one before, so a fact split across a boundary is kept whole."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks: list[str] = []
    current = ""
    for paragraph in paragraphs:
        while len(paragraph) > size:  # a huge paragraph: hard split
            head, paragraph = paragraph[:size], paragraph[size - overlap :]
            if current:
                chunks.append(current)
                current = ""
            chunks.append(head)
        if current and len(current) + len(paragraph) + 2 > size:
            chunks.append(current)
            current = current[-overlap:] + "\n\n" + paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        chunks.append(current)
    return chunks


async def ingest(service: MemoryService, data: bytes) -> Any:
    """One step of chunking a document into `collection` (see the module docstring). The reply:
    `chunks` in the document, `kept` (stored before this step), `added` (by this step),
    `pending` (still to embed) and `removed` (chunks of an earlier version, dropped once nothing
    is pending)."""
    started = time.perf_counter()
    req = msgspec.json.decode(data, type=Ingest)
    if not req.text.strip():
        raise MemoryRefused(f"document {req.source!r} is empty")
    if not req.collection or not req.collection.replace("-", "").replace("_", "").isalnum():
        raise MemoryRefused(f"collection name {req.collection!r}: use letters, digits, '-' or '_'")
    tenant = await service.tenant(req.caller, "memory/write", "ingest")
    chunks = chunk(req.text)
    scope = Scope(
        tenant=tenant, equals={"kind": "doc", "collection": req.collection, "source": req.source}
    )
    existing = {h.id for h in await service.store.scroll(DOCUMENTS, scope, limit=MAX_CHUNKS)}
    wanted = {
        point_id(tenant, f"doc:{req.collection}:{req.source}", text): (i, text)
        for i, text in enumerate(chunks)
    }
    # similar lengths side by side: a batch is padded to its longest text
    missing = sorted(
        ((pid, i, text) for pid, (i, text) in wanted.items() if pid not in existing),
        key=lambda item: len(item[2]),
    )
    # the caller's bounds, within the service's own: it answers one request at a time, and a
    # step that embedded a whole large document would hold up every other tenant
    limit = min(req.limit or MAX_STEP_CHUNKS, MAX_STEP_CHUNKS)
    budget_s = min(req.budget_s or MAX_STEP_S, MAX_STEP_S)
    todo = missing[:limit]
    added = 0
    group = min(EMBED_STEP, limit)
    for start in range(0, len(todo), group):
        batch = todo[start : start + group]
        vectors = await service.embed([text for _, _, text in batch])
        await service.store.upsert(
            DOCUMENTS,
            [
                StoredPoint(
                    id=pid,
                    vector=vector,
                    payload={
                        "tenant": tenant,
                        "kind": "doc",
                        "collection": req.collection,
                        "source": req.source,
                        "chunk": i,
                        "text": text,
                        "valid_from": service.clock(),
                    },
                    keywords=document_keywords(text),
                )
                for (pid, i, text), vector in zip(batch, vectors, strict=True)
            ],
        )
        added += len(batch)
        if time.perf_counter() - started >= budget_s:
            break
    pending = len(missing) - added
    stale = [] if pending else sorted(existing - set(wanted))
    if stale:
        await service.store.delete(DOCUMENTS, scope, stale)
    return {
        "source": req.source,
        "chunks": len(chunks),
        "kept": len(chunks) - len(missing),
        "added": added,
        "pending": pending,
        "removed": len(stale),
    }


async def search_docs(service: MemoryService, data: bytes) -> Any:
    """Document chunks for a query: dense and keyword rankings fused."""
    req = msgspec.json.decode(data, type=SearchDocs)
    if not req.query.strip() or not 0 < req.k <= 100:
        raise MemoryRefused("search needs a query and 1 <= k <= 100")
    tenant = await service.tenant(req.caller, "memory/read", "search_docs")
    equals: dict[str, str | int | bool] = {"kind": "doc"}
    if req.collection:
        equals["collection"] = req.collection
    (query_vector,) = await service.embed([req.query])
    hits = await service.store.search(
        DOCUMENTS,
        query_vector,
        Scope(tenant=tenant, equals=equals),
        req.k,
        keywords=query_keywords(req.query),
    )
    return [
        {
            "id": h.id,
            "score": round(h.score, 6),
            "text": h.payload["text"],
            "source": h.payload["source"],
            "collection": h.payload["collection"],
        }
        for h in hits
    ]
