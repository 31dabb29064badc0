"""Identity benchmark: chain verification per hop (cold and memoized), and one bus hop
with identity on (a 3-link chain carried and verified) against off, side by side.

    python benchmarks/identity.py [--hops 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
from nacl.signing import SigningKey

from relaybus.bus import (
    Bus,
    Consumer,
    Delivery,
    Link,
    NatsServer,
    Settings,
    default_topology,
    ensure,
    new_envelope,
    new_id,
)
from relaybus.services.identity.chain import (
    DEFAULT_DEPTH,
    ChainVerifier,
    LinkBody,
    child_body,
    new_nonce,
    sign_body,
    stamp_payload,
)
from relaybus.services.identity.scopes import parse_scope

SERVICE = SigningKey.generate()
AGENTS = {n: SigningKey.generate() for n in ("orch", "research", "writer")}


def extend(chain: list[Link], frm: str, to: str) -> list[Link]:
    parent = msgspec.msgpack.decode(chain[-1].payload, type=LinkBody)
    child = child_body(
        parent, chain[-1].payload, issuer_agent=frm, subject=to, scopes=[parse_scope("search/docs")]
    )
    payload, sig = sign_body(child, AGENTS[frm])
    return [*chain, Link(payload=payload, signature=sig, stamp=stamp_payload(payload, SERVICE))]


def build_chain(run_id: str) -> list[Link]:
    now = time.time()
    body = LinkBody(
        run_id=run_id,
        issuer="user:alice",
        subject="orch",
        principal="alice",
        scopes=(parse_scope("search"), parse_scope("email/send:recipient_domain=team.example")),
        nbf=now,
        exp=now + 600,
        depth=DEFAULT_DEPTH,
        nonce=new_nonce(),
    )
    payload, sig = sign_body(body, SERVICE)
    chain = [Link(payload=payload, signature=sig, stamp=stamp_payload(payload, SERVICE))]
    for frm, to in (("orch", "research"), ("research", "writer")):
        parent = msgspec.msgpack.decode(chain[-1].payload, type=LinkBody)
        child = child_body(
            parent,
            chain[-1].payload,
            issuer_agent=frm,
            subject=to,
            scopes=[parse_scope("search/docs")],
        )
        payload, sig = sign_body(child, AGENTS[frm])
        chain.append(Link(payload=payload, signature=sig, stamp=stamp_payload(payload, SERVICE)))
    return chain


def verifier() -> ChainVerifier:
    keys = {n: k.verify_key for n, k in AGENTS.items()}
    return ChainVerifier(SERVICE.verify_key, keys.get)


def time_verify(memoized: bool, n: int = 2000) -> float:
    chain = build_chain("RUN1")
    shared = verifier()
    t = time.perf_counter()
    for _ in range(n):
        (shared if memoized else verifier()).verify(chain, "RUN1", "writer")
    return (time.perf_counter() - t) / n * 1e6


async def hop_p50(bus: Bus, agent: str, with_identity: bool, hops: int) -> float:
    """With identity: every hop carries the run's chain plus a freshly signed last link, as a
    real handoff does; the prefix is memoized, the new link is verified cold."""
    got: asyncio.Queue[float] = asyncio.Queue()
    check = verifier()
    run_id = new_id()
    prefix = build_chain(run_id)[:2]
    check.verify(prefix, run_id, "research")

    async def handler(d: Delivery) -> None:
        if with_identity:
            check.verify(d.envelope.chain, d.envelope.run_id, "writer")
        got.put_nowait(time.perf_counter())

    stop = asyncio.Event()
    task = asyncio.create_task(Consumer(bus, agent, handler, concurrency=1).run(stop))
    await asyncio.sleep(0.3)
    lat = []
    for _ in range(hops):
        env = new_envelope(
            kind="task", sender="bench", recipient=agent, payload=b"{}", run_id=run_id
        )
        if with_identity:
            env = msgspec.structs.replace(env, chain=tuple(extend(prefix, "research", "writer")))
        t = time.perf_counter()
        await bus.publish(env)
        lat.append((await got.get() - t) * 1e6)
    stop.set()
    await task
    return statistics.median(lat)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hops", type=int, default=500)
    args = parser.parse_args()
    cold, memo = time_verify(False), time_verify(True)
    print(
        f"verify a 3-link chain: cold {cold:.0f} µs, memoized {memo:.0f} µs (ratio {cold / memo:.1f}x)"
    )
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        async with Bus(Settings.from_env({}, nats_url=server.url), name="bench") as bus:
            await ensure(bus, default_topology(bus.subjects))
            off = await hop_p50(bus, "hopoff", False, args.hops)
            on = await hop_p50(bus, "hopon", True, args.hops)
    print(
        f"one hop p50: identity off {off:.0f} µs, on {on:.0f} µs (3-link chain carried, new link verified "
        f"cold, prefix memoized): added {on - off:.0f} µs, ratio {on / off:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
