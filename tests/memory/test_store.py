"""Both engines behind the store interface: tenant isolation, ids, persistence, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relaybus.memory.edge import EdgeStore
from relaybus.memory.embed import LexicalEmbedder
from relaybus.memory.keywords import document_keywords, query_keywords
from relaybus.memory.qdrant import QdrantStore
from relaybus.memory.store import MemoryRefused, Scope, StoredPoint, VectorStore, point_id

EMBED = LexicalEmbedder()
FACTS = {
    "alice": [
        "alice prefers green tea",
        "alice works on the pricing team",
        "alice's manager is bob",
    ],
    "mallory": ["mallory wants alice's secrets", "mallory prefers coffee"],
}


@pytest.fixture(params=["edge", "qdrant-client"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    engine: VectorStore = (
        EdgeStore(tmp_path / "edge")
        if request.param == "edge"
        else QdrantStore.connect(path=str(tmp_path / "qdrant"))
    )
    await engine.ensure_collection("memories", EMBED.dim, EMBED.id)
    for tenant, texts in FACTS.items():
        vectors = EMBED.embed(texts)
        await engine.upsert(
            "memories",
            [
                StoredPoint(
                    id=point_id(tenant, "fact", t),
                    vector=v,
                    payload={"tenant": tenant, "kind": "fact", "text": t},
                    keywords=document_keywords(t),
                )
                for t, v in zip(texts, vectors, strict=True)
            ],
        )
    yield engine
    await engine.close()


async def test_search_only_returns_the_callers_tenant(store: VectorStore) -> None:
    query = EMBED.embed(["what does alice prefer to drink"])[0]
    hits = await store.search("memories", query, Scope(tenant="alice"), 5)
    assert hits and {h.payload["tenant"] for h in hits} == {"alice"}
    assert hits[0].payload["text"] == "alice prefers green tea"
    stolen = await store.search(
        "memories", EMBED.embed(["alice's secrets"])[0], Scope(tenant="mallory"), 10
    )
    assert {h.payload["tenant"] for h in stolen} == {"mallory"}


async def test_hybrid_search_finds_an_exact_word_the_dense_ranking_misses(
    store: VectorStore,
) -> None:
    """A dense vector unrelated to every fact, but a rare word in the keywords: the keyword
    ranking pulls the fact to the top."""
    unrelated = EMBED.embed(["weather report tomorrow"])[0]
    dense = await store.search("memories", unrelated, Scope(tenant="alice"), 3)
    assert max(abs(h.score) for h in dense) < 0.1  # dense alone has nothing to go on
    hybrid = await store.search(
        "memories", unrelated, Scope(tenant="alice"), 1, keywords=query_keywords("bob")
    )
    assert [h.payload["text"] for h in hybrid] == ["alice's manager is bob"]
    # the keyword channel is tenant-filtered too
    stolen = await store.search(
        "memories", unrelated, Scope(tenant="mallory"), 5, keywords=query_keywords("green tea")
    )
    assert {h.payload["tenant"] for h in stolen} == {"mallory"}


async def test_guessing_another_tenants_id_reads_and_deletes_nothing(store: VectorStore) -> None:
    target = point_id("alice", "fact", "alice prefers green tea")
    assert await store.get("memories", [target], Scope(tenant="mallory")) == []
    assert await store.delete("memories", Scope(tenant="mallory"), [target]) == 0
    assert len(await store.get("memories", [target], Scope(tenant="alice"))) == 1


async def test_crafted_filters_cannot_name_the_tenant(store: VectorStore) -> None:
    with pytest.raises(MemoryRefused, match="may not set"):
        Scope(tenant="mallory", equals={"tenant": "alice"})
    with pytest.raises(MemoryRefused, match="needs a tenant"):
        Scope(tenant="")
    assert await store.count("memories", Scope(tenant="mallory", equals={"kind": "fact"})) == 2


async def test_delete_by_scope_removes_only_the_tenants_points(store: VectorStore) -> None:
    assert await store.delete("memories", Scope(tenant="mallory")) == 2
    assert await store.count("memories", Scope(tenant="mallory")) == 0
    assert await store.count("memories", Scope(tenant="alice")) == 3


async def test_wrong_vector_size_and_unknown_collection_are_clear_errors(
    store: VectorStore,
) -> None:
    with pytest.raises(
        MemoryRefused, match="512-dimensional vectors, got 3: is the embedder misconfigured"
    ):
        await store.search("memories", [0.1, 0.2, 0.3], Scope(tenant="alice"), 1)
    with pytest.raises(MemoryRefused, match="no collection 'nope'"):
        await store.count("nope", Scope(tenant="alice"))


async def test_the_edge_store_survives_a_reopen_and_refuses_another_embedder(
    tmp_path: Path,
) -> None:
    first = EdgeStore(tmp_path / "edge")
    await first.ensure_collection("docs", EMBED.dim, EMBED.id)
    text = "the handbook says expenses are filed monthly"
    await first.upsert(
        "docs",
        [
            StoredPoint(
                id=point_id("alice", "doc", text),
                vector=EMBED.embed([text])[0],
                payload={"tenant": "alice", "kind": "doc", "text": text},
            )
        ],
    )
    await first.close()
    again = EdgeStore(tmp_path / "edge")
    assert await again.count("docs", Scope(tenant="alice")) == 1
    with pytest.raises(MemoryRefused, match="vectors must not mix"):
        await again.ensure_collection("docs", 384, "minilm")
    await again.close()
