"""Ledger benchmark: hold+capture decisions per second and added latency per costed step,
with 1, 8 and 32 agent processes, beside a plain bus handoff on the same server; the same
spenders against a ledger of 1, 2 and 4 partitions, each with its own writer process; checks
that nothing was overspent (exit 1 if anything was).

    python benchmarks/ledger.py [--steps 300]
    python benchmarks/ledger.py --only-partitions [--spender-procs 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import plain_hop_us

from relaybus.bus import (
    Bus,
    NatsServer,
    Settings,
    default_topology,
    ensure,
)
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.ops import Budget
from relaybus.services.ledger.partitions import names

HERE = Path(__file__).resolve().parent


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="hold+capture steps per process")
    parser.add_argument("--lease-steps", type=int, default=20000, help="leased steps per process")
    parser.add_argument("--chunk", type=int, default=1000, help="lease chunk in micro-units")
    parser.add_argument(
        "--spender-procs",
        type=int,
        default=1,
        choices=(1, 2, 4, 8, 32),
        help="processes the 32 concurrent spenders run in",
    )
    parser.add_argument(
        "--group-steps", type=int, default=400, help="hold+capture pairs per concurrent spender"
    )
    parser.add_argument(
        "--only-partitions", action="store_true", help="run only the 1/2/4-writer section"
    )
    args = parser.parse_args()
    if args.only_partitions:
        with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
            settings = Settings.from_env({}, nats_url=server.url, home=Path(tmp) / "home")
            return 1 if await partitioned(settings, args) else 0
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        settings = Settings.from_env({}, nats_url=server.url, home=Path(tmp) / "home")
        env = {**os.environ, **settings.env(), "RELAYBUS_LOG_LEVEL": "WARNING"}
        ledger_proc = subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", "service", "ledger"], env=env
        )
        try:
            async with Bus(settings, name="bench") as bus:
                await ensure(bus, default_topology(bus.subjects))
                client = LedgerClient(bus)
                for _ in range(150):
                    try:
                        await client.query("ping")
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                budget = 32 * args.steps + 8 * args.steps + args.steps
                await client.set_budget("bench-budget", Budget(level="run:BENCH", limit=budget))
                hop = await plain_hop_us(bus, "lhop")
                print(f"plain bus handoff p50: {hop:.0f} µs")
                overspent = await group_commit(client, env, args)
                for procs in (1, 8, 32):
                    started = time.perf_counter()
                    workers = [
                        subprocess.Popen(
                            [sys.executable, str(HERE / "ledger_worker.py"), str(args.steps)],
                            env=env,
                            stdout=subprocess.PIPE,
                            text=True,
                        )
                        for _ in range(procs)
                    ]
                    lat: list[float] = []
                    for w in workers:
                        lat += json.loads(w.communicate(timeout=600)[0])
                    elapsed = time.perf_counter() - started
                    print(
                        f"{procs:>2} processes: {len(lat) / elapsed:,.0f} hold+capture steps/s aggregate "
                        f"(incl. process start), mean {statistics.fmean(lat):.0f} µs, "
                        f"p50 {statistics.median(lat):.0f} µs per step = {statistics.median(lat) / hop:.1f}x a plain handoff"
                    )
                rows = await client.query("levels", level="run:BENCH")
                spent = rows[0]["spent"]
                print(
                    f"budget {budget}, spent {spent}: {'no overspend' if spent <= budget else 'OVERSPENT'}"
                )
                overspent = overspent or spent > budget
                lease_budget = int(args.lease_steps * 41 * 0.9)  # the 32-process round runs dry
                await client.set_budget(
                    "lease-budget", Budget(level="run:LEASE", limit=lease_budget)
                )
                print(f"with leases (chunk {args.chunk}), budget {lease_budget} over all rounds:")
                for procs in (1, 8, 32):
                    workers = [
                        subprocess.Popen(
                            [
                                sys.executable,
                                str(HERE / "lease_worker.py"),
                                str(args.lease_steps),
                                str(args.chunk),
                            ],
                            env=env,
                            stdout=subprocess.PIPE,
                            text=True,
                        )
                        for _ in range(procs)
                    ]
                    stats = [json.loads(w.communicate(timeout=600)[0]) for w in workers]
                    lat = [x for s in stats for x in s["lat"]]
                    steps = sum(s["spent"] for s in stats)
                    rate = steps / max(s["elapsed"] for s in stats)
                    mean = statistics.fmean(lat) if lat else 0.0
                    print(
                        f"{procs:>2} processes: {rate:,.0f} steps/s aggregate, mean {mean:.1f} µs added per step, "
                        f"{steps} steps decided, {sum(s['settled'] for s in stats)} settled"
                    )
                rows = await client.query("levels", level="run:LEASE")
                spent = rows[0]["spent"]
                print(
                    f"lease budget {lease_budget}, captured {spent}: "
                    f"{'no overspend' if spent <= lease_budget else 'OVERSPENT'}"
                )
                overspent = overspent or spent > lease_budget
            overspent = await partitioned(settings, args) or overspent
        finally:
            ledger_proc.send_signal(signal.SIGTERM)
            ledger_proc.wait(30)
    return 1 if overspent else 0


def spenders(mode: str, procs: int, per_proc: int, steps: int, target: str, env: dict[str, str]):
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "spender_worker.py"),
                mode,
                str(per_proc),
                str(steps),
                target,
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]


def rate_of(workers: list[subprocess.Popen[str]]) -> tuple[float, int, int]:
    """Decisions per second from the workers' own clocks (started together, so the slowest's
    elapsed time is the round's), decisions and refusals."""
    stats = [json.loads(w.communicate(timeout=900)[0]) for w in workers]
    decisions = sum(int(s["decisions"]) for s in stats)
    return decisions / max(s["elapsed"] for s in stats), decisions, sum(s["refused"] for s in stats)


async def group_commit(client: LedgerClient, env: dict[str, str], args: argparse.Namespace) -> bool:
    """32 concurrent spenders (in `--spender-procs` processes) on one writer, beside a raw nats-py writer that
    appends every decision to JetStream before it answers; returns whether anything overspent."""
    procs, per_proc = args.spender_procs, 32 // args.spender_procs
    spenders_n, steps = procs * per_proc, args.group_steps
    budget = spenders_n * steps - 7  # runs dry at the very end: refusals are decided too
    await client.set_budget("gc-budget", Budget(level="run:GC", limit=budget))
    raw_writer = subprocess.Popen(
        [sys.executable, str(HERE / "spender_worker.py"), "rawwriter", "rawledger.decide"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert raw_writer.stdout is not None and raw_writer.stdout.readline().strip() == "ready"
    try:
        raw_rate, raw_n, _ = rate_of(
            spenders("raw", procs, per_proc, steps, "rawledger.decide", env)
        )
    finally:
        raw_writer.communicate(timeout=30)
    ours_rate, ours_n, refused = rate_of(spenders("ours", procs, per_proc, steps, "run:GC", env))
    rows = await client.query("levels", level="run:GC")
    spent, held = rows[0]["spent"], rows[0]["held"]
    print(
        f"group commit, {spenders_n} concurrent spenders in {procs} processes, one writer: "
        f"{ours_rate:,.0f} decisions/s ({ours_n} decisions, {refused} holds refused at the "
        f"budget) vs raw nats-py writer appending each decision {raw_rate:,.0f}/s ({raw_n}): "
        f"{ours_rate / raw_rate:.2f}x"
    )
    print(
        f"  budget {budget}, spent {spent}, held {held}: {'no overspend' if spent + held <= budget else 'OVERSPENT'}"
    )
    return spent + held > budget


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def partitioned(settings: Settings, args: argparse.Namespace) -> bool:
    """32 concurrent spenders, each paying as its own user against that user's budget, on a
    ledger of 1, 2 and 4 partitions (a writer process each); then every hold also against one
    level all of them share, so each hold spans partitions. Returns whether anything overspent."""
    procs, per_proc = args.spender_procs, 32 // args.spender_procs
    steps = args.group_steps
    overspent = False
    for shared in (False, True):
        base = 0.0
        label = "+ one shared level (holds span partitions)" if shared else "own levels"
        for writers in (1, 2, 4):
            prefix = f"lp{writers}{'s' if shared else ''}"
            run = settings.model_copy(update={"prefix": prefix})
            env = {
                **os.environ,
                **run.env(),
                "RELAYBUS_LOG_LEVEL": "WARNING",
                "RELAYBUS_LEDGER_PARTITIONS": str(writers),
            }
            procs_started = [
                subprocess.Popen(
                    [sys.executable, "-m", "relaybus.cli", "service", "ledger", "--partition", p],
                    env=env,
                )
                for p in names(writers)
            ]
            try:
                async with Bus(run, name="bench") as bus:
                    await ensure(bus, default_topology(bus.subjects))
                    client = LedgerClient(bus, partitions=writers)
                    for _ in range(300):  # bounded: the writers are starting
                        try:
                            if (await client.query("ping")).get("partitions", 1) == writers:
                                break
                        except Exception:
                            pass
                        await asyncio.sleep(0.1)
                    users = [f"user:w{w}-{n}" for w in range(procs) for n in range(per_proc)]
                    limit = steps - 3  # each runs dry 3 steps before its end: refusals too
                    await asyncio.gather(
                        *(client.set_budget(f"b-{u}", Budget(level=u, limit=limit)) for u in users)
                    )
                    shared_limit = len(users) * limit - 50
                    await client.set_budget(
                        "b-shared", Budget(level="shared:bench", limit=shared_limit)
                    )
                    workers = [
                        subprocess.Popen(
                            [
                                sys.executable,
                                str(HERE / "spender_worker.py"),
                                "spread",
                                str(per_proc),
                                str(steps),
                                f"w{w}" + ("+shared" if shared else ""),
                            ],
                            env=env,
                            stdout=subprocess.PIPE,
                            text=True,
                        )
                        for w in range(procs)
                    ]
                    cpu_before = [cpu_s(proc.pid) for proc in procs_started]
                    rate, decisions, refused = rate_of(workers)
                    cpu = [cpu_s(p.pid) - b for p, b in zip(procs_started, cpu_before, strict=True)]
                    rows = {r["level"]: r for r in await client.query("levels")}
                    over = [u for u in users if rows[u]["spent"] + rows[u]["held"] > limit]
                    shared_row = rows.get("shared:bench", {"spent": 0, "held": 0})
                    if shared_row["spent"] + shared_row["held"] > shared_limit:
                        over.append("shared:bench")
                    overspent = overspent or bool(over)
                    base = base or rate
                    # what the writers could do with a core each: the busiest writer's CPU time
                    # bounds the round
                    ceiling = decisions / max(cpu) if max(cpu) > 0 else 0.0
                    print(
                        f"partitioned, {label}: {writers} writer(s): {rate:,.0f} decisions/s "
                        f"({rate / base:.2f}x one writer; {decisions} decisions, {refused} holds "
                        f"refused at a budget); writer CPU {sum(cpu) * 1e6 / decisions:.0f} µs "
                        f"per decision, busiest {max(cpu):.1f}s → {ceiling:,.0f} decisions/s with "
                        f"a core per writer: "
                        f"{'OVERSPENT ' + ', '.join(over) if over else 'no overspend'}"
                    )
            finally:
                for proc in procs_started:
                    proc.send_signal(signal.SIGTERM)
                for proc in procs_started:
                    proc.wait(30)
    return overspent


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
