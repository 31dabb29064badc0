"""NATS messages per single-hop run, by subject family (issue #23's targets: at most 12 with bus
+ runtime, 20 with every layer on), next to what a raw nats-py JetStream round trip needs,
counted on the same server in the same run by a connection subscribed to `>`.

    python benchmarks/messages.py [--runs 50] [--json]

The run: `submit(wait=True)` to an agent whose handler returns at once (no journaled steps).
Then what a fanned-out child adds: a parent that spawns one child and gathers it, against the
same parent spawning none; and the same parent spawning eight at once, whose outcomes share its
journal's writes.
The raw job: publish to a work-queue stream with PubAck, a pull consumer fetches, acks and
replies on the caller's inbox. Runs go one at a time, so every message counted belongs to one.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import nats
from nats.js import api

from relaybus.agents.submit import submit
from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure

ROOT = Path(__file__).resolve().parent.parent
WIDE = 8  # children of the wide fan-out


def family(subject: str, prefix: str) -> str:
    """A subject's family: `task`, `event`, `$KV.runs`, `$JS.API.CONSUMER.INFO`, `$JS.ACK`, …"""
    parts = subject.split(".")
    if subject.startswith("_INBOX"):
        return "_INBOX (replies)"
    if parts[0] == "$JS" and parts[1] == "API":
        return (
            ".".join(parts[:4])
            if parts[2] in ("STREAM", "CONSUMER", "DIRECT")
            else ".".join(parts[:3])
        )
    if parts[0] == "$JS":
        return ".".join(parts[:2])
    if parts[0] == "$KV":
        return f"$KV.{parts[1].removeprefix(prefix + '_')}"
    if parts[0] == prefix:
        return parts[1]
    return parts[0]


class Counter:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.counts: collections.Counter[str] = collections.Counter()
        self.sequence: list[str] = []
        self.on = False

    async def seen(self, msg: object) -> None:
        if self.on:
            self.counts[family(msg.subject, self.prefix)] += 1  # type: ignore[attr-defined]
            self.sequence.append(msg.subject)  # type: ignore[attr-defined]


async def counted(url: str, prefix: str, job: object, runs: int) -> collections.Counter[str]:
    nc = await nats.connect(url, name="bench-counter")
    counter = Counter(prefix)
    await nc.subscribe(">", cb=counter.seen)
    await nc.flush()
    try:
        await job(1)  # type: ignore[operator]  # warm: consumers, handles, caches
        await asyncio.sleep(0.5)
        counter.on = True
        await job(runs)  # type: ignore[operator]
        await asyncio.sleep(1.0)  # what is still on its way (acks, late events)
        counter.on = False
    finally:
        await nc.close()
    if os.environ.get("BENCH_SEQUENCE"):
        print("\n".join(counter.sequence), file=sys.stderr)
    return counter.counts


async def raw_job_factory(url: str) -> tuple[object, object]:
    nc = await nats.connect(url, name="bench-raw")
    js = nc.jetstream()
    await js.add_stream(name="RAWQ", subjects=["rawq.>"], retention=api.RetentionPolicy.WORK_QUEUE)
    psub = await js.pull_subscribe("rawq.>", durable="rawworker", stream="RAWQ")
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(1, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                await msg.ack()
                await nc.publish(msg.headers["reply"], msg.data)  # type: ignore[index]

    task = asyncio.create_task(worker())

    async def job(runs: int) -> None:
        for i in range(runs):
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, max_msgs=1)
            await js.publish(f"rawq.{i}", b'{"x": 1}', headers={"reply": inbox})
            await sub.next_msg(timeout=10)

    async def close() -> None:
        stop.set()
        await task
        await nc.close()

    return job, close


def start_agent(settings: Settings, spec: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings.env(),
        "RELAYBUS_LOG_LEVEL": "WARNING",
        "PYTHONPATH": f"{ROOT / 'benchmarks'}{os.pathsep}{ROOT}",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "relaybus.cli", "agent", "run", spec], env=env, cwd=ROOT
    )


async def every_layer(tmp: Path, url: str, runs: int) -> collections.Counter[str]:
    """The same single-hop run with identity (a user's token, the chain verified), a costed
    tool (authorized, audited, held and captured) and spans on."""
    from relaybus.services.identity.client import IdentityClient, write_agent_key
    from relaybus.services.identity.natsconfig import write_nkey

    home = tmp / "layered"
    settings = Settings.from_env(
        {}, nats_url=url, home=home, identity=True, ledger=True, trace_dir=tmp / "spans"
    )
    env = {
        **os.environ,
        **settings.env(),
        "RELAYBUS_LOG_LEVEL": "WARNING",
        "PYTHONPATH": f"{ROOT / 'benchmarks'}{os.pathsep}{ROOT}",
    }
    cli = [sys.executable, "-m", "relaybus.cli"]
    procs = [
        subprocess.Popen([*cli, "service", name], env=env, cwd=ROOT)
        for name in ("identity", "ledger")
    ]
    try:
        async with Bus(settings, name="bench") as bus:
            for name in ("identity", "ledger"):
                for _ in range(150):  # bounded: 30 s
                    try:
                        await bus.request(bus.subjects.service(name, "ping"), b"{}", 0.5)
                        break
                    except Exception:
                        await asyncio.sleep(0.2)
            identity = IdentityClient(bus)
            key = write_agent_key(home.resolve(), "bcecho").verify_key
            await identity.add_agent(
                "bcecho", key, ["load"], [], write_nkey(home.resolve(), "bcecho")
            )
            await identity.add_user("msguser", ["load"], [])
            token = str((await identity.issue_token("msguser"))["token"])
            procs.append(
                subprocess.Popen(
                    [*cli, "agent", "run", "bench_agents:CostedEcho"], env=env, cwd=ROOT
                )
            )
            await asyncio.sleep(3.0)

            async def job(n: int) -> None:
                for i in range(n):
                    outcome = await submit(
                        bus,
                        "bcecho",
                        json.dumps({"n": i}).encode(),
                        sender="user:msguser",
                        token=token,
                        wait=True,
                        timeout_s=30,
                    )
                    if outcome.status != "completed":
                        raise SystemExit(f"run {outcome.run_id} {outcome.status}: {outcome.error}")

            return await counted(url, settings.prefix, job, runs)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)


async def fanned_out(
    bus: Bus, settings: Settings, url: str, runs: int
) -> dict[int, collections.Counter[str]]:
    """What a fanned-out child adds to its run: the same parent with no child, with one and
    with eight (bus + runtime), counted alike."""
    agents = [start_agent(settings, spec) for spec in ("bench_agents:Echo", "bench_agents:FanEcho")]
    try:
        await asyncio.sleep(2.5)
        counts = {}
        for children in (0, 1, WIDE):

            async def fan(n: int, children: int = children) -> None:
                body = json.dumps({"children": children}).encode()
                for _ in range(n):
                    outcome = await submit(bus, "bfan", body, wait=True, timeout_s=30)
                    if outcome.status != "completed":
                        raise SystemExit(f"run {outcome.run_id} {outcome.status}")

            counts[children] = await counted(url, settings.prefix, fan, runs)
        return counts
    finally:
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
        for agent in agents:
            agent.wait(30)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        settings = Settings.from_env({}, nats_url=server.url, nats_auth=False, home=Path(tmp))
        prefix = settings.prefix
        raw, close_raw = await raw_job_factory(server.url)
        raw_counts = await counted(server.url, prefix, raw, args.runs)
        await close_raw()  # type: ignore[operator]
        async with Bus(settings, name="bench") as bus:
            await ensure(bus, default_topology(bus.subjects))
            agent = start_agent(settings, "bench_agents:Steps")
            try:
                await asyncio.sleep(2.5)

                async def ours(runs: int) -> None:
                    for _ in range(runs):
                        outcome = await submit(
                            bus, "bsteps", b'{"steps": 0}', wait=True, timeout_s=30
                        )
                        if outcome.status != "completed":
                            raise SystemExit(f"run {outcome.run_id} {outcome.status}")

                our_counts = await counted(server.url, prefix, ours, args.runs)
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(30)
            fan_counts = await fanned_out(bus, settings, server.url, args.runs)
        layered_counts = await every_layer(Path(tmp), server.url, args.runs)
    per_run = {k: v / args.runs for k, v in sorted(our_counts.items(), key=lambda kv: -kv[1])}
    layered = {k: v / args.runs for k, v in sorted(layered_counts.items(), key=lambda kv: -kv[1])}
    raw_per_run = {k: v / args.runs for k, v in sorted(raw_counts.items(), key=lambda kv: -kv[1])}
    ours_total, raw_total = sum(per_run.values()), sum(raw_per_run.values())
    fan_totals = {n: sum(c.values()) / args.runs for n, c in fan_counts.items()}
    child_adds = fan_totals[1] - fan_totals[0]
    wide_writes = fan_counts[WIDE]["$KV.journal"] / args.runs
    if args.json:
        print(
            json.dumps(
                {
                    "runs": args.runs,
                    "bus_runtime": per_run,
                    "raw": raw_per_run,
                    "every_layer": layered,
                    "every_layer_total": sum(layered.values()),
                    "bus_runtime_total": ours_total,
                    "raw_total": raw_total,
                    "ratio": ours_total / raw_total,
                    "fan_out_no_child_total": fan_totals[0],
                    "fan_out_one_child_total": fan_totals[1],
                    "child_adds": child_adds,
                    "fan_out_wide_children": WIDE,
                    "fan_out_wide_total": fan_totals[WIDE],
                    "fan_out_wide_journal_writes": wide_writes,
                }
            )
        )
        return 0
    print(f"NATS messages per single-hop run ({args.runs} runs, one at a time)")
    print(f"{'family':<36} {'bus+runtime':>12} {'every layer':>12} {'raw nats-py':>12}")
    families = set(per_run) | set(raw_per_run) | set(layered)
    for name in sorted(families, key=lambda k: -layered.get(k, 0)):
        print(
            f"{name:<36} {per_run.get(name, 0):>12.1f} {layered.get(name, 0):>12.1f} "
            f"{raw_per_run.get(name, 0):>12.1f}"
        )
    layered_total = sum(layered.values())
    print(
        f"{'total':<36} {ours_total:>12.1f} {layered_total:>12.1f} {raw_total:>12.1f}   "
        f"ratios {ours_total / raw_total:.1f}x, {layered_total / raw_total:.1f}x"
    )
    print(
        f"a fanned-out child (bus + runtime): a parent that spawns none {fan_totals[0]:.1f}, "
        f"one {fan_totals[1]:.1f}: the child adds {child_adds:.1f} messages to its run "
        f"({child_adds / raw_total:.1f}x a raw round trip's)"
    )
    print(
        f"a parent that spawns {WIDE} children at once: {fan_totals[WIDE]:.1f} messages a run, "
        f"{wide_writes:.1f} of them writes of its journal (its children, which return at once, "
        "journal nothing)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
