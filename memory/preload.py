"""Pre-loaded context: the session window, recalled memories and documents, assembled into
prompt context within a token budget. Everything retrieved is untrusted data and is placed in
delimited data blocks (never instructions)."""

from __future__ import annotations

from typing import Any

from .client import MemoryClient


def estimate_tokens(text: str) -> int:
    """A cheap, conservative estimate (about four characters per token)."""
    return max(1, (len(text) + 3) // 4)


def _block(kind: str, source: str, text: str) -> str:
    return f'<data kind="{kind}" source="{source}">\n{text}\n</data>'


async def assemble(
    memory: MemoryClient,
    query: str,
    *,
    budget_tokens: int,
    session: str = "",
    turns: int = 10,
    memories: int = 5,
    documents: int = 5,
    collection: str = "",
) -> dict[str, Any]:
    """Blocks in priority order (recent turns, then memories, then document chunks), each
    added only while the total stays within `budget_tokens`. Returns the text and what was used."""
    if budget_tokens <= 0:
        raise ValueError("budget_tokens must be positive")
    candidates: list[tuple[str, str, str]] = []
    if session:
        window = await memory.window(session, last=turns)
        if window:
            candidates.append(
                ("session", session, "\n".join(f"{t['role']}: {t['text']}" for t in window))
            )
    for hit in await memory.recall(query, k=memories) if memories else []:
        candidates.append(("memory", hit["id"], hit["text"]))
    for hit in (
        await memory.search_docs(query, k=documents, collection=collection) if documents else []
    ):
        candidates.append(("document", hit["source"], hit["text"]))
    used: list[dict[str, Any]] = []
    blocks: list[str] = []
    total = 0
    for kind, source, text in candidates:
        block = _block(kind, source, text)
        cost = estimate_tokens(block)
        if total + cost > budget_tokens:
            continue
        blocks.append(block)
        total += cost
        used.append({"kind": kind, "source": source, "tokens": cost})
    return {
        "text": "\n\n".join(blocks),
        "tokens": total,
        "used": used,
        "dropped": len(candidates) - len(used),
    }
