"""Documents for retrieval: chunking with overlap, and dense + keyword fusion."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .store import Hit

CHUNK_CHARS = 800
OVERLAP_CHARS = 120
_WORD = re.compile(r"[a-z0-9]+")


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


def keyword_score(query: str, text: str) -> float:
    terms = set(_WORD.findall(query.lower()))
    if not terms:
        return 0.0
    words = set(_WORD.findall(text.lower()))
    return len(terms & words) / len(terms)


def fuse(dense: Sequence[Hit], query: str, k: int, rrf_k: int = 60) -> list[tuple[Hit, float]]:
    """Reciprocal-rank fusion of the dense ranking and a keyword ranking of the same candidates."""
    keyword = sorted(
        dense, key=lambda h: keyword_score(query, h.payload.get("text", "")), reverse=True
    )
    scores: dict[str, float] = {}
    for ranking in (list(dense), keyword):
        for rank, hit in enumerate(ranking):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (rrf_k + rank + 1)
    by_id = {h.id: h for h in dense}
    ordered = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:k]
    return [(by_id[i], s) for i, s in ordered]
