import math

import pytest

from relaybus.memory.embed import LexicalEmbedder
from relaybus.memory.service import choose_embedder
from relaybus.memory.store import MemoryRefused


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_lexical_embeddings_are_normalised_and_keyword_sensitive() -> None:
    e = LexicalEmbedder()
    a, b, c = e.embed(["acme raised prices", "prices raised by acme", "the weather is nice"])
    assert math.isclose(cos(a, a), 1.0, rel_tol=1e-9) and len(a) == e.dim
    assert cos(a, b) > cos(a, c)


def test_minilm_runs_offline_and_ranks_paraphrases_first() -> None:
    e = choose_embedder("minilm")
    assert e.id == "all-minilm-l6-v2" and e.dim == 384
    query, para, other = e.embed(
        ["who runs acme", "acme is led by chief executive dana", "the weather in paris is nice"]
    )
    assert math.isclose(cos(query, query), 1.0, rel_tol=1e-5)
    assert cos(query, para) > 0.5 > cos(query, other)
    assert e.embed([]) == []


def test_unknown_embedder_is_a_clear_error() -> None:
    with pytest.raises(MemoryRefused, match="RELAYBUS_EMBEDDER='bert'"):
        choose_embedder("bert")


def test_minilm_vectors_do_not_depend_on_batching_or_padding() -> None:
    e = choose_embedder("minilm")
    texts = [
        "a long paragraph " * 60 + "about how the stack is deployed",
        "short",
        "a middling sentence about the ledger and its budgets",
    ] * 7  # more than one batch, lengths mixed
    together = e.embed(texts)
    for i, text in enumerate(texts[:3]):
        (alone,) = e.embed([text])
        for copy in together[i::3]:
            assert max(abs(a - b) for a, b in zip(alone, copy, strict=True)) < 1e-5
