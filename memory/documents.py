"""Documents for retrieval: paragraph-aware chunking with overlap."""

from __future__ import annotations

import re

CHUNK_CHARS = 800
OVERLAP_CHARS = 120


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
