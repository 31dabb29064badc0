"""Round trips: a task → result across processes, 512-byte payload, 64 in flight, against raw
nats-py on the same server in the same run.

- raw nats-py: JetStream publish with PubAck to a work-queue stream; a worker process pulls,
  acks and answers on the caller's core inbox (no run record, no journal).
- bus + runtime: `submit(wait=True)` on a kept connection, and `relaybus.Client`'s
  `submit(...).result()`, to an agent process that returns its task (durable journal, run
  record, events).
- a fanned-out child: runs of an orchestrator fanning out to 0, 1 and 8 Echo children (bus +
  runtime); what one child adds in latency and in capacity, next to a raw round trip.
- every layer on: the same through identity (a user token, the chain verified at the hop),
  a costed tool (authorized, audited, held and captured by the ledger, journaled) and spans.

Prints p50/p99 latency and throughput for each and the ratios to raw, and the CPU every
process of the path spent per run (this process, nats-server, the worker, agent and service
processes; from /proc); exits non-zero on any run that did not complete with its own payload.

    python benchmarks/roundtrip.py [--runs 1000] [--in-flight 64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
from load import start, wait_service
from nats.js import api
from runtime import percentile, stop

import relaybus
from relaybus.agents.submit import submit
from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.services.identity.client import IdentityClient, write_agent_key
from relaybus.services.identity.natsconfig import write_nkey

PAD = "x" * 480
USER = "rtuser"


def payload(i: int) -> bytes:
    body = json.dumps({"n": i, "pad": PAD}).encode()
    return body + b" " * (512 - len(body))


#: the processes whose CPU a measured path spends, by name: this one and nats-server, then
#: whichever worker, agent and service processes the path runs on (set around each section)
CPU_PIDS: dict[str, int] = {"caller": os.getpid()}


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process `pid` has used so far (Linux /proc); None once it
    has exited (a crashed agent: its row then leaves that process out rather than failing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone (FileNotFoundError), or being reaped (ProcessLookupError)
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    runs: int, in_flight: int, one: Callable[[int], Awaitable[bool]]
) -> dict[str, float]:
    """`runs` round trips, `in_flight` at a time; latency per round trip, throughput overall,
    and the CPU the processes in `CPU_PIDS` spent per round trip."""
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []
    failed = 0

    async def timed(i: int) -> None:
        nonlocal failed
        async with gate:
            started = time.perf_counter()
            ok = await one(i)
            latencies.append((time.perf_counter() - started) * 1000)
            failed += not ok

    await asyncio.gather(*(timed(i) for i in range(min(50, runs))))  # warm: handles, caches
    latencies.clear()
    pids = dict(CPU_PIDS)
    cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    await asyncio.gather(*(timed(i) for i in range(runs)))
    elapsed = time.perf_counter() - started
    by_process, gone = {}, []
    for name, pid in pids.items():
        before, after = cpu_before[name], cpu_s(pid)
        if before is None or after is None:
            gone.append(name)
        else:
            by_process[name] = round((after - before) * 1e6 / runs, 1)
    return {
        "per_s": runs / elapsed,
        "cpu_us": sum(by_process.values()),
        "cpu_us_by_process": by_process,  # type: ignore[dict-item]
        "cpu_not_counted": gone,  # type: ignore[dict-item]  # exited while measured
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
        "failed": failed,
    }


async def raw_worker(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("rtq.>", durable="rtworker", stream="RTQ")
    while True:
        try:
            msgs = await sub.fetch(64, timeout=0.5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            await msg.ack()
            await nc.publish(msg.headers["reply"], msg.data)  # type: ignore[index]


async def raw(url: str, runs: int, in_flight: int) -> dict[str, float]:
    nc = await nats.connect(url, name="rt-raw")
    js = nc.jetstream()
    await js.add_stream(name="RTQ", subjects=["rtq.>"], retention=api.RetentionPolicy.WORK_QUEUE)
    await js.add_consumer("RTQ", durable_name="rtworker", ack_policy=api.AckPolicy.EXPLICIT)
    worker = subprocess.Popen([sys.executable, __file__, "--raw-worker", url])
    CPU_PIDS["worker"] = worker.pid
    try:

        async def one(i: int) -> bool:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, max_msgs=1)
            body = payload(i)
            await js.publish(f"rtq.{i}", body, headers={"reply": inbox})
            return (await sub.next_msg(timeout=30)).data == body

        return await measure(runs, in_flight, one)
    finally:
        del CPU_PIDS["worker"]
        stop([worker])  # type: ignore[list-item]
        await nc.close()


def echoed(result: object, i: int) -> bool:
    return isinstance(result, dict) and result.get("n") == i and result.get("pad") == PAD


async def ours(
    settings: Settings, agent: str, runs: int, in_flight: int, token: str | None
) -> dict[str, dict[str, float]]:
    sender = f"user:{USER}" if token else "user:dev"
    out = {}
    async with Bus(settings, name="rt-kept") as bus:

        async def kept(i: int) -> bool:
            outcome = await submit(
                bus, agent, payload(i), sender=sender, token=token, wait=True, timeout_s=120
            )
            return outcome.status == "completed" and echoed(outcome.result, i)

        out["kept connection, submit(wait=True)"] = await measure(runs, in_flight, kept)
    async with relaybus.Client(settings, user=sender.removeprefix("user:"), token=token) as client:

        async def api(i: int) -> bool:
            run = await client.submit(agent, payload(i))
            return echoed(await run.result(timeout_s=120), i)

        out["relaybus.Client submit().result()"] = await measure(runs, in_flight, api)
    return out


FAN = 8  # children per fanned-out run


async def fanned(settings: Settings, runs: int, in_flight: int) -> dict[str, dict[str, float]]:
    """Runs of `bfan` that fan out to 0 and to FAN Echo children: what one child adds, in
    latency (one run at a time, 1 child) and in capacity (FAN children, `in_flight` runs)."""
    out = {}
    async with Bus(settings, name="rt-fan") as bus:

        def fan(children: int) -> Callable[[int], Awaitable[bool]]:
            async def one(i: int) -> bool:
                body = json.dumps({"n": i, "pad": PAD, "children": children}).encode()
                outcome = await submit(bus, "bfan", body, wait=True, timeout_s=120)
                return outcome.status == "completed" and outcome.result == children

            return one

        latency_runs = max(50, runs // 5)
        out["fan-out, no child, one at a time"] = await measure(latency_runs, 1, fan(0))
        out["fan-out, 1 child, one at a time"] = await measure(latency_runs, 1, fan(1))
        out["fan-out, no child"] = await measure(runs, in_flight, fan(0))
        out[f"fan-out, {FAN} children"] = await measure(runs // 2, in_flight, fan(FAN))
    return out


def child_costs(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """What one fanned-out child adds, as multiples of a raw round trip: its latency (one run
    at a time) and the capacity it takes (`in_flight` runs of FAN children)."""
    raw_one, raw = results["raw nats-py, one at a time"], results["raw nats-py"]
    latency = (
        results["fan-out, 1 child, one at a time"]["p50_ms"]
        - results["fan-out, no child, one at a time"]["p50_ms"]
    )
    capacity_s = (
        1 / results[f"fan-out, {FAN} children"]["per_s"] - 1 / results["fan-out, no child"]["per_s"]
    ) / FAN
    return {
        "child_latency_ms": latency,
        "child_latency_x_raw": latency / raw_one["p50_ms"],
        "child_capacity_ms": capacity_s * 1000,
        "child_capacity_x_raw": capacity_s * raw["per_s"],
    }


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--raw-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_worker:
        await raw_worker(args.raw_worker)
        return 0
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        home = Path(tmp) / "home"
        plain = Settings.from_env({}, nats_url=server.url, home=home, nats_auth=False)
        layered = Settings.from_env(
            {},
            nats_url=server.url,
            home=home,
            identity=True,
            ledger=True,
            trace_dir=Path(tmp) / "spans",
        )
        async with Bus(plain, name="rt") as bus:
            await ensure(bus, default_topology(bus.subjects))
        assert server.process is not None
        CPU_PIDS["nats-server"] = server.process.pid
        results["raw nats-py"] = await raw(server.url, args.runs, args.in_flight)
        results["raw nats-py, one at a time"] = await raw(server.url, max(50, args.runs // 5), 1)
        procs = [
            start(plain, "agent", "run", "bench_agents:Echo", "--concurrency", "64"),
            start(plain, "agent", "run", "bench_agents:FanEcho", "--concurrency", "64"),
        ]
        CPU_PIDS.update({"agent becho": procs[0].pid, "agent bfan": procs[1].pid})
        try:
            await asyncio.sleep(3.0)
            for how, row in (await ours(plain, "becho", args.runs, args.in_flight, None)).items():
                results[f"bus + runtime, {how}"] = row
            results.update(await fanned(plain, args.runs, args.in_flight))
        finally:
            del CPU_PIDS["agent becho"], CPU_PIDS["agent bfan"]
            stop(procs)
        procs = [start(layered, "service", "identity"), start(layered, "service", "ledger")]
        try:
            async with Bus(layered, name="rt") as bus:
                await wait_service(bus, "identity")
                await wait_service(bus, "ledger")
                identity = IdentityClient(bus)
                key = write_agent_key(home.resolve(), "bcecho").verify_key
                nkey = write_nkey(home.resolve(), "bcecho")
                await identity.add_agent("bcecho", key, ["load"], [], nkey)
                await identity.add_user(USER, ["load"], [])
                token = str((await identity.issue_token(USER))["token"])
            procs.append(
                start(layered, "agent", "run", "bench_agents:CostedEcho", "--concurrency", "64")
            )
            CPU_PIDS.update(
                {"identity": procs[0].pid, "ledger": procs[1].pid, "agent bcecho": procs[2].pid}
            )
            await asyncio.sleep(3.0)
            for how, row in (
                await ours(layered, "bcecho", args.runs, args.in_flight, token)
            ).items():
                results[f"every layer on, {how}"] = row
        finally:
            stop(procs)
    base = results["raw nats-py"]
    for row in results.values():
        row["p50_x_raw"] = row["p50_ms"] / base["p50_ms"]
        row["throughput_x_raw"] = row["per_s"] / base["per_s"]
        # (CPU time comes in clock ticks: a tiny --runs can measure raw's as 0)
        row["cpu_x_raw"] = row["cpu_us"] / base["cpu_us"] if base["cpu_us"] else None  # type: ignore[assignment]
    child = child_costs(results)
    if args.json:
        print(json.dumps({**results, "fanned_out_child": child}, indent=2))
    else:
        print(f"{args.runs} round trips, 512-byte payload, {args.in_flight} in flight")
        print(
            f"{'path':<62} {'runs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50/raw':>8} "
            f"{'tput/raw':>9} {'CPU µs/run':>11} {'CPU/raw':>8}"
        )
        for name, row in results.items():
            cpu_x = "n/a" if row["cpu_x_raw"] is None else f"{row['cpu_x_raw']:.2f}x"
            gone = f"  (exited, not counted: {', '.join(row['cpu_not_counted'])})"  # type: ignore[arg-type]
            print(
                f"{name:<62} {row['per_s']:>8.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                f"{row['p50_x_raw']:>7.2f}x {row['throughput_x_raw']:>8.3f}x "
                f"{row['cpu_us']:>11.0f} {cpu_x:>8}" + (gone if row["cpu_not_counted"] else "")
            )
        print(
            f"a fanned-out child (bus + runtime) adds {child['child_latency_ms']:.2f} ms one run "
            f"at a time ({child['child_latency_x_raw']:.1f}x a raw round trip one at a time) and "
            f"takes {child['child_capacity_ms']:.2f} ms of capacity with {args.in_flight} runs in "
            f"flight ({child['child_capacity_x_raw']:.1f}x a raw round trip's)"
        )
    return 1 if any(row["failed"] for row in results.values()) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
