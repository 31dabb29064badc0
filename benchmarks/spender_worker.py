"""One benchmark process: S concurrent spenders, each N sequential hold+capture pairs.

    python spender_worker.py ours SPENDERS STEPS LEVEL   # through LedgerClient (batched)
    python spender_worker.py raw SPENDERS STEPS SUBJECT  # nats-py requests to the raw writer
    python spender_worker.py rawwriter SUBJECT           # the raw writer: each request appended
                                                         # to a JetStream stream, then answered
    python spender_worker.py spread SPENDERS STEPS NAME  # spender n pays as user:NAME-n, against
                                                         # that level (and `shared:…` if NAME ends
                                                         # in +shared): a partitioned ledger

Prints {"decisions", "elapsed", "refused"} as JSON (a hold and a capture are two decisions).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import nats

from relaybus.bus import Bus, Settings
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import BudgetExceeded


async def ours(spenders: int, steps: int, level: str) -> dict[str, float]:
    refused = 0
    async with Bus(Settings.from_env(os.environ), name="spender-bench") as bus:
        ledger = LedgerClient(bus)
        await ledger.query("ping")

        async def spender(n: int) -> None:
            nonlocal refused
            for i in range(steps):
                op = f"{os.getpid()}-{n}-{i}"
                try:
                    await ledger.hold(f"h{op}", "user:bench", "tool:x", 1, [level, "user:bench"])
                except BudgetExceeded:
                    refused += 1
                    continue
                await ledger.capture(f"c{op}", f"h{op}", 1)

        started = time.perf_counter()
        await asyncio.gather(*(spender(n) for n in range(spenders)))
        elapsed = time.perf_counter() - started
    return {"decisions": 2 * spenders * steps - refused, "elapsed": elapsed, "refused": refused}


async def spread(spenders: int, steps: int, name: str) -> dict[str, float]:
    """Each spender its own payer and budget level, so a partitioned ledger spreads them; with
    `+shared`, every hold also counts against one level that all of them share."""
    refused = 0
    name, shared = name.removesuffix("+shared"), name.endswith("+shared")
    async with Bus(Settings.from_env(os.environ), name="spender-bench") as bus:
        ledger = LedgerClient(bus)

        async def spender(n: int) -> None:
            nonlocal refused
            user = f"user:{name}-{n}"
            levels = [user, "shared:bench"] if shared else [user]
            for i in range(steps):
                op = f"{name}-{n}-{i}"
                try:
                    await ledger.hold(f"h{op}", user, "tool:x", 1, levels)
                except BudgetExceeded:
                    refused += 1
                    continue
                await ledger.capture(f"c{op}", f"h{op}", 1)

        started = time.perf_counter()
        await asyncio.gather(*(spender(n) for n in range(spenders)))
        elapsed = time.perf_counter() - started
    return {"decisions": 2 * spenders * steps - refused, "elapsed": elapsed, "refused": refused}


async def raw(spenders: int, steps: int, subject: str) -> dict[str, float]:
    nc = await nats.connect(os.environ["RELAYBUS_NATS_URL"], name="raw-spender")

    async def spender(n: int) -> None:
        for i in range(steps):
            for kind in ("hold", "capture"):
                body = json.dumps({"kind": kind, "id": f"{os.getpid()}-{n}-{i}", "amount": 1})
                await nc.request(subject, body.encode(), timeout=30)

    started = time.perf_counter()
    await asyncio.gather(*(spender(n) for n in range(spenders)))
    elapsed = time.perf_counter() - started
    await nc.close()
    return {"decisions": 2 * spenders * steps, "elapsed": elapsed, "refused": 0}


async def raw_writer(subject: str) -> None:
    """What a journaled decision costs in plain nats-py: one JetStream append per request (with
    its PubAck), then the reply. No decision logic, no batching."""
    nc = await nats.connect(os.environ["RELAYBUS_NATS_URL"], name="raw-writer")
    js = nc.jetstream()
    await js.add_stream(name="RAWLEDGER", subjects=["rawledger.>"])

    async def decide(msg: nats.aio.msg.Msg) -> None:
        await js.publish("rawledger.p0", msg.data)
        await msg.respond(b'{"ok":true}')

    await nc.subscribe(subject, cb=decide)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    await nc.close()


if __name__ == "__main__":
    if sys.argv[1] == "rawwriter":
        asyncio.run(raw_writer(sys.argv[2]))
        sys.exit(0)
    mode, spenders, steps, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    run = {"ours": ours, "raw": raw, "spread": spread}[mode]
    print(json.dumps(asyncio.run(run(spenders, steps, target))))
