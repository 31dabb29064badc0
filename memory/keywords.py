"""Keyword vectors for hybrid search: BM25 term weights as sparse vectors.

Documents get BM25-saturated term frequencies; queries get weight 1 per term; the engine applies
IDF (a Qdrant sparse vector with the IDF modifier), so rare words — names, codes, ids — carry the
match. Dense and keyword rankings are fused by score (`relaybus.memory.engine.fuse`).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import msgspec

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from has have how in is it its of on or our "
    "that the their this to was were what when where which who whom why will with".split()
)
KEYWORDS_VERSION = "bm25-v1"  # stored with each collection: term hashing must never change silently
K1, B, AVG_LEN = 1.2, 0.75, 12.0


class Sparse(msgspec.Struct, frozen=True):
    indices: list[int]
    values: list[float]


def terms(text: str) -> list[str]:
    """Lowercased words without stopwords; a plural 's' is dropped so 'prices' finds 'price'."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


def _index(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "big")


def document_keywords(text: str) -> Sparse:
    counts = Counter(terms(text))
    length = sum(counts.values())
    norm = K1 * (1 - B + B * length / AVG_LEN)
    weights = {_index(t): c * (K1 + 1) / (c + norm) for t, c in counts.items()}
    return Sparse(indices=list(weights), values=list(weights.values()))


def query_keywords(text: str) -> Sparse:
    indices = sorted({_index(t) for t in terms(text)})
    return Sparse(indices=indices, values=[1.0] * len(indices))
