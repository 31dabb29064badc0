"""Embedders behind one interface. The id is stored with each collection so vectors never mix.

`LexicalEmbedder` needs nothing: it hashes word unigrams and bigrams into a fixed-size,
L2-normalised vector (a keyword matcher with cosine scores). A semantic embedder (a MiniLM-class
model loaded from a local package) plugs in behind the same interface.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from typing import Protocol

_WORD = re.compile(r"[a-z0-9]+")


class Embedder(Protocol):
    id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class LexicalEmbedder:
    """Hashed bag of words and word pairs; deterministic, offline, zero dependencies."""

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim
        self.id = f"lexical-v1-{dim}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vector = [0.0] * self.dim
            for feature in self._features(text):
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "big") % self.dim
                vector[index] += 1.0 if digest[4] & 1 else -1.0
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            out.append([v / norm for v in vector])
        return out
