"""Memory benchmark (offline, generated): recall@1, recall@5 and MRR for keyword and paraphrased
queries per embedder, and recall latency p50/p99 through the memory service with a tenant filter
at 10k and 100k memories, beside a plain bus handoff.

    python benchmarks/recall.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import plain_hop_us

from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.memory.client import MemoryClient
from relaybus.memory.edge import EdgeStore
from relaybus.memory.embed import LexicalEmbedder
from relaybus.memory.keywords import document_keywords, query_keywords
from relaybus.memory.messages import Caller
from relaybus.memory.service import COLLECTION, MemoryService
from relaybus.memory.store import StoredPoint, point_id

SYLLABLES = "ka lo mi ra ven tor bel dun sa fi ro quin mar tal zu pe gra nox li da".split()
CITIES = "berlin lyon osaka lima oslo porto austin dublin seoul perth quito turin".split()
PEOPLE = "dana omar li ravi sofia mateo ingrid kwame yuki nadia pablo greta".split()
PRODUCTS = "widgetpro cloudnine databox ledgerly pipewise shipfast notably querymax".split()
# (fact template, keyword query, paraphrased query): the paraphrase shares no content word with
# the fact but the entity's name
ATTRIBUTES = [
    ("{e} is headquartered in {city}", "{e} headquartered", "where is {e} based"),
    ("{e} is led by chief executive {person}", "{e} chief executive", "who runs {e}"),
    (
        "{e} charges {n} dollars per seat each month",
        "{e} dollars per seat",
        "how much does {e} cost",
    ),
    ("{e} was founded in the year {year}", "{e} founded year", "when did {e} start out"),
    (
        "{e} sells a flagship product called {product}",
        "{e} flagship product",
        "what is the main thing {e} makes",
    ),
    ("{e} employs about {n} people", "{e} employs people", "how big is the team at {e}"),
    (
        "{e} counts {other} as its largest customer",
        "{e} largest customer",
        "who buys the most from {e}",
    ),
    (
        "{e} answers support tickets within {n} hours",
        "{e} support tickets",
        "how quickly does {e} respond to problems",
    ),
]


def entity_names(rng: random.Random, n: int) -> list[str]:
    if n > 160_000:
        raise SystemExit(f"{n} companies is more than the name generator can make unique")
    names: set[str] = set()
    while len(names) < n:  # 20 syllables, 2-4 of them: 168,400 names, enough for 1.3M facts
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3, 4)))))
    return sorted(names)


def facts(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(fact, keyword query, paraphrased query) triples: n // 8 made-up companies with eight
    attributes each, so a query must find both the right company and the right attribute."""
    names = entity_names(rng, max(1, n // len(ATTRIBUTES)))
    out = []
    for name in names:
        for fact, keyword, para in ATTRIBUTES:
            values = {
                "e": name,
                "city": rng.choice(CITIES),
                "person": rng.choice(PEOPLE),
                "n": str(rng.randint(2, 900)),
                "year": str(rng.randint(1950, 2024)),
                "product": rng.choice(PRODUCTS),
                "other": rng.choice(names),
            }
            out.append((fact.format(**values), keyword.format(**values), para.format(**values)))
    rng.shuffle(out)
    return out[:n]


def score(rankings: list[list[str]], truths: list[str]) -> dict[str, float]:
    r1 = sum(r[:1] == [t] for r, t in zip(rankings, truths, strict=True)) / len(truths)
    r5 = sum(t in r[:5] for r, t in zip(rankings, truths, strict=True)) / len(truths)
    mrr = sum(
        1 / (r.index(t) + 1) if t in r else 0 for r, t in zip(rankings, truths, strict=True)
    ) / len(truths)
    return {"recall@1": r1, "recall@5": r5, "mrr": mrr}


async def quality_per_embedder(size: int, queries: int) -> None:
    """Recall quality of each embedder on the same generated set, in-process (no service)."""
    from relaybus.memory.minilm import MiniLMEmbedder
    from relaybus.memory.store import Scope

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
                            keywords=document_keywords(f),
                        )
                        for f, v in zip(batch, vectors, strict=True)
                    ],
                )
            load_s = time.perf_counter() - t
            truths = [data[i][0] for i in sample]
            for mode, kind, column in itertools.product(
                ("dense", "hybrid"), ("keyword", "paraphrase"), (1, 2)
            ):
                if (kind == "keyword") != (column == 1):
                    continue
                rankings = []
                for i in sample:
                    query = data[i][column]
                    hits = await store.search(
                        "q",
                        embedder.embed([query])[0],
                        Scope(tenant="t"),
                        5,
                        keywords=query_keywords(query) if mode == "hybrid" else None,
                    )
                    rankings.append([h.payload["text"] for h in hits])
                s = score(rankings, truths)
                print(
                    f"{size:,} facts, {embedder.id:<16} {mode:<6} {kind:<10} "
                    f"recall@1 {s['recall@1']:.2f}  recall@5 {s['recall@5']:.2f}  "
                    f"MRR {s['mrr']:.2f}  (embedded in {load_s:.1f}s)"
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
                                keywords=document_keywords(f),
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
