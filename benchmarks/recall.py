"""Memory benchmark (offline, generated): recall@1, recall@5 and MRR for keyword and paraphrased
queries per embedder, and recall latency p50/p99 through the memory service with a tenant filter
at 10k and 100k memories, beside a plain bus handoff.

    python benchmarks/recall.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import plain_hop_us

from bus import Bus, NatsServer, Settings, default_topology, ensure
from memory.client import MemoryClient
from memory.edge import EdgeStore
from memory.embed import LexicalEmbedder
from memory.messages import Caller
from memory.service import COLLECTION, MemoryService
from memory.store import StoredPoint, point_id

NAMES = [
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
]
ATTRS = [
    ("headquarters", "is headquartered in", "where is {e} based"),
    ("ceo", "is led by chief executive", "who runs {e}"),
    ("price", "charges per seat", "how much does {e} cost per seat"),
    ("founded", "was founded in the year", "when did {e} start"),
    ("product", "sells a flagship product called", "what is the main thing {e} makes"),
]
VALUES = [
    "berlin",
    "lyon",
    "osaka",
    "lima",
    "oslo",
    "dana",
    "omar",
    "li",
    "ravi",
    "sofia",
    "40",
    "55",
    "1999",
    "2004",
    "widgetpro",
    "cloudnine",
    "databox",
]


def facts(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(fact text, keyword query, paraphrased query) triples; entities repeat across tenants."""
    out = []
    for i in range(n):
        entity = f"{rng.choice(NAMES)}{i}"
        _, phrase, para = rng.choice(ATTRS)
        value = rng.choice(VALUES)
        out.append(
            (
                f"{entity} {phrase} {value}",
                f"{entity} {phrase.split()[0]} {phrase.split()[-1]}",
                para.format(e=entity),
            )
        )
    return out


def score(rankings: list[list[str]], truths: list[str]) -> dict[str, float]:
    r1 = sum(r[:1] == [t] for r, t in zip(rankings, truths, strict=True)) / len(truths)
    r5 = sum(t in r[:5] for r, t in zip(rankings, truths, strict=True)) / len(truths)
    mrr = sum(
        1 / (r.index(t) + 1) if t in r else 0 for r, t in zip(rankings, truths, strict=True)
    ) / len(truths)
    return {"recall@1": r1, "recall@5": r5, "mrr": mrr}


async def quality_per_embedder(size: int, queries: int) -> None:
    """Recall quality of each embedder on the same generated set, in-process (no service)."""
    from memory.minilm import MiniLMEmbedder
    from memory.store import Scope

    rng = random.Random(11)
    data = facts(rng, size)
    sample = rng.sample(range(size), min(queries, size))
    for embedder in (LexicalEmbedder(), MiniLMEmbedder()):
        with tempfile.TemporaryDirectory() as tmp:
            store = EdgeStore(Path(tmp))
            await store.ensure_collection("q", embedder.dim, embedder.id)
            t = time.perf_counter()
            for start in range(0, size, 256):
                batch = [f for f, _, _ in data[start : start + 256]]
                vectors = embedder.embed(batch)
                await store.upsert(
                    "q",
                    [
                        StoredPoint(
                            id=point_id("t", "fact", f),
                            vector=v,
                            payload={"tenant": "t", "kind": "fact", "text": f},
                        )
                        for f, v in zip(batch, vectors, strict=True)
                    ],
                )
            load_s = time.perf_counter() - t
            truths = [data[i][0] for i in sample]
            for kind, column in (("keyword", 1), ("paraphrase", 2)):
                rankings = []
                for i in sample:
                    hits = await store.search(
                        "q", embedder.embed([data[i][column]])[0], Scope(tenant="t"), 5
                    )
                    rankings.append([h.payload["text"] for h in hits])
                s = score(rankings, truths)
                print(
                    f"{size:,} facts, {embedder.id:<16} {kind:<10} recall@1 {s['recall@1']:.2f}  "
                    f"recall@5 {s['recall@5']:.2f}  MRR {s['mrr']:.2f}  (embedded in {load_s:.1f}s)"
                )
            await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--semantic-size", type=int, default=2000, help="facts for the MiniLM quality run"
    )
    args = parser.parse_args()
    await quality_per_embedder(args.semantic_size, args.queries)
    rng = random.Random(7)
    embedder = LexicalEmbedder()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        settings = Settings.from_env({}, nats_url=server.url, home=Path(tmp) / "home")
        async with Bus(settings, name="bench") as bus:
            await ensure(bus, default_topology(bus.subjects))
            hop = await plain_hop_us(bus, "memhop")
            print(f"plain bus handoff p50: {hop:.0f} µs")
            for size in (int(s) for s in args.sizes.split(",")):
                store = EdgeStore(Path(tmp) / f"mem{size}")
                service = MemoryService(store, embedder)
                await service.start()
                data = facts(rng, size)
                t = time.perf_counter()
                for start in range(0, size, 2000):  # 10 tenants, bulk-loaded into the store
                    batch = data[start : start + 2000]
                    vectors = embedder.embed([f for f, _, _ in batch])
                    await store.upsert(
                        COLLECTION,
                        [
                            StoredPoint(
                                id=point_id(f"t{(start + i) % 10}", "fact", f),
                                vector=v,
                                payload={
                                    "tenant": f"t{(start + i) % 10}",
                                    "kind": "fact",
                                    "text": f,
                                    "valid_from": 0.0,
                                    "valid_to": 0.0,
                                },
                            )
                            for i, (f, v) in enumerate(
                                zip([f for f, _, _ in batch], vectors, strict=True)
                            )
                        ],
                    )
                load_s = time.perf_counter() - t
                sub = await bus.serve(f"{bus.subjects.prefix}.svc.memory.*", service.handle)
                sample = rng.sample(range(size), args.queries)
                results: dict[str, list[list[str]]] = {"keyword": [], "paraphrase": []}
                truths, lat = [], []
                for idx in sample:
                    fact, keyword, para = data[idx]
                    client = MemoryClient(
                        bus, Caller(run_id="R", agent="bench", principal=f"user:t{idx % 10}")
                    )
                    truths.append(fact)
                    for kind, query in (("keyword", keyword), ("paraphrase", para)):
                        t = time.perf_counter()
                        hits = await client.recall(query, k=5)
                        lat.append((time.perf_counter() - t) * 1000)
                        results[kind].append([h["text"] for h in hits])
                await sub.unsubscribe()
                await store.close()
                lat.sort()
                print(
                    f"{size:,} memories (10 tenants, loaded in {load_s:.1f}s): recall through the service "
                    f"p50 {statistics.median(lat):.2f} ms, p99 {lat[int(0.99 * len(lat))]:.2f} ms"
                )
                for kind, rankings in results.items():
                    s = score(rankings, truths)
                    print(
                        f"  {embedder.id} {kind:<10} recall@1 {s['recall@1']:.2f}  recall@5 {s['recall@5']:.2f}"
                        f"  MRR {s['mrr']:.2f}"
                    )


if __name__ == "__main__":
    asyncio.run(main())
