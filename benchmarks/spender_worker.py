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
from collections.abc import Callable

import nats

from relaybus.bus import Bus, Settings
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import BudgetExceeded


async def ours(spenders: int, steps: int, level: str) -> dict[str, float]:
    """Every spender pays as `user:bench`, against `level` and that user's level."""
    return await spend(spenders, steps, str(os.getpid()), lambda n: "user:bench", [level])


async def spread(spenders: int, steps: int, name: str) -> dict[str, float]:
    """Each spender its own payer and budget level, so a partitioned ledger spreads them; with
    `+shared`, every hold also counts against one level that all of them share."""
    name, shared = name.removesuffix("+shared"), name.endswith("+shared")
    also = ["shared:bench"] if shared else []
    return await spend(spenders, steps, name, lambda n: f"user:{name}-{n}", also)


async def spend(
    spenders: int, steps: int, prefix: str, payer: Callable[[int], str], levels: list[str]
) -> dict[str, float]:
    """`spenders` concurrent spenders, each `steps` hold+capture pairs of 1 as `payer(n)`,
    against `levels` and the payer's own level (a refused hold is counted, not captured)."""
    refused = 0
    async with Bus(Settings.from_env(os.environ), name="spender-bench") as bus:
        ledger = LedgerClient(bus)
        await ledger.query("ping")

        async def spender(n: int) -> None:
            nonlocal refused
            user = payer(n)
            for i in range(steps):
                op = f"{prefix}-{n}-{i}"
                try:
                    await ledger.hold(f"h{op}", user, "tool:x", 1, [*levels, user])
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
