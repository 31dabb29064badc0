"""Load: 1,000 concurrent runs x 3 hops across 4 agent processes, identity, ledger and tracing on.

Side by side on one embedded server: the same 1,000 messages through a raw nats-py three-hop
pipeline (JetStream publish with PubAck → pull fetch → publish next → ack, in 4 processes).
Prints throughput, p50/p99 latency (submit → completed), the ratios, and checks zero loss:
every run completed, nothing dead-lettered, the ledger charged each run exactly once.

    python benchmarks/load.py [--runs 1000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_agents import LOAD_TOOL_COST
from runtime import percentile, stop

from relaybus.agents.submit import submit
from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.bus.feed import EventFeed
from relaybus.bus.streams import StreamSpec, ensure_stream
from relaybus.services.identity.client import IdentityClient, write_agent_key
from relaybus.services.identity.natsconfig import write_nkey
from relaybus.services.ledger.client import LedgerClient

ROOT = Path(__file__).resolve().parent.parent
USER = "loaduser"
POLICY = {"lentry": ["lmid"], "lmid": ["lleaf"], "lleaf": []}


def child_env(settings: Settings) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("RELAYBUS_")},
        **settings.env(),
        "RELAYBUS_LOG_LEVEL": "WARNING",
        "PYTHONPATH": f"{ROOT / 'benchmarks'}{os.pathsep}{ROOT}",
    }


def start(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "relaybus.cli", *args], env=child_env(settings), cwd=ROOT
    )


async def wait_service(bus: Bus, name: str) -> None:
    for _ in range(150):  # bounded: 30 s
        try:
            await bus.request(bus.subjects.service(name, "ping"), b"{}", timeout_s=0.5)
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} service did not start")


async def setup_identity(bus: Bus, settings: Settings) -> str:
    client = IdentityClient(bus)
    for name, handoff in POLICY.items():
        key = write_agent_key(settings.home.resolve(), name).verify_key
        nkey = write_nkey(settings.home.resolve(), name)  # agents take the secure path
        await client.add_agent(name, key, ["load"], handoff, nkey)
    await client.add_user(USER, ["load"], [])
    return str((await client.issue_token(USER))["token"])


async def relay_runs(bus: Bus, token: str, runs: int, submitters: int) -> dict[str, object]:
    started: dict[str, float] = {}
    latencies: list[float] = []
    failed: list[str] = []
    done = asyncio.Event()
    gate = asyncio.Semaphore(submitters)
    async with EventFeed(bus) as feed:

        async def reader() -> None:
            while len(latencies) + len(failed) < runs:
                event = await feed.next(120)
                if event is None:
                    break
                if event.kind in ("completed", "failed") and event.run_id in started:
                    t0 = started.pop(event.run_id)
                    if event.kind == "completed":
                        latencies.append((time.perf_counter() - t0) * 1000)
                    else:
                        failed.append(f"{event.error}")
            done.set()

        async def one(i: int) -> None:
            async with gate:
                t0 = time.perf_counter()
                outcome = await submit(
                    bus, "lentry", json.dumps({"n": i}).encode(), sender=f"user:{USER}", token=token
                )
                started[outcome.run_id] = t0

        read = asyncio.create_task(reader())
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(runs)))
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - t0
        await read
    return {
        "runs": runs,
        "completed": len(latencies),
        "failed": len(failed),
        "lost": runs - len(latencies) - len(failed),
        "per_s": runs / elapsed,
        "p50_ms": percentile(latencies, 0.5) if latencies else 0.0,
        "p99_ms": percentile(latencies, 0.99) if latencies else 0.0,
    }


async def raw_pipeline(bus: Bus, url: str, runs: int) -> dict[str, object]:
    prefix = "rawload"
    await ensure_stream(bus, StreamSpec("RAWLOAD", (f"{prefix}.raw.>",), retention="workqueue"))
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "raw_hop_worker.py"), url, prefix, str(h)]
        )
        for h in (0, 1, 2, 2)
    ]
    try:
        await asyncio.sleep(1.5)
        nc = bus.nc
        started: dict[bytes, float] = {}
        latencies: list[float] = []
        all_done = asyncio.Event()

        async def on_done(msg: object) -> None:
            key = bytes(msg.data)  # type: ignore[attr-defined]
            if key in started:
                latencies.append((time.perf_counter() - started.pop(key)) * 1000)
                if len(latencies) == runs:
                    all_done.set()

        sub = await nc.subscribe(f"{prefix}.rawdone", cb=on_done)
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            key = f"m{i}".encode()
            async with gate:
                started[key] = time.perf_counter()
                await bus.js.publish(f"{prefix}.raw.0", key)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(runs)))
        try:
            await asyncio.wait_for(all_done.wait(), 120)
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - t0
        await sub.unsubscribe()
    finally:
        stop(procs)
    return {
        "runs": runs,
        "completed": len(latencies),
        "lost": runs - len(latencies),
        "per_s": runs / elapsed,
        "p50_ms": percentile(latencies, 0.5) if latencies else 0.0,
        "p99_ms": percentile(latencies, 0.99) if latencies else 0.0,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--submitters", type=int, default=64, help="submissions in flight")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        settings = Settings.from_env(
            {},
            nats_url=server.url,
            home=Path(tmp) / "home",
            identity=True,
            ledger=True,
            trace_dir=Path(tmp) / "spans",
        )
        procs: list[subprocess.Popen[bytes]] = []
        try:
            async with Bus(settings, name="bench") as bus:
                await ensure(bus, default_topology(bus.subjects))
                procs += [
                    start(settings, "service", "identity"),
                    start(settings, "service", "ledger"),
                ]
                await wait_service(bus, "identity")
                await wait_service(bus, "ledger")
                token = await setup_identity(bus, settings)
                for spec in ("LoadEntry", "LoadMid", "LoadLeaf", "LoadLeaf"):
                    procs.append(
                        start(
                            settings, "agent", "run", f"bench_agents:{spec}", "--concurrency", "64"
                        )
                    )
                await asyncio.sleep(3.0)
                await relay_runs(bus, token, 20, 20)  # warm up
                ours = await relay_runs(bus, token, args.runs, args.submitters)
                dlq = await bus.js.stream_info(bus.subjects.stream("DLQ"))
                levels = await LedgerClient(bus).query("levels", level=f"user:{USER}")
                charged = sum(level["spent"] for level in levels)
                ours["dead_letters"] = dlq.state.messages
                ours["charged_runs"] = charged // LOAD_TOOL_COST - 20
                raw = await raw_pipeline(bus, server.url, args.runs)
        finally:
            stop(procs)
        spans = sum(len(p.read_text().splitlines()) for p in (Path(tmp) / "spans").glob("*.jsonl"))
    out = {
        "relaybus": ours,
        "raw_nats_py": raw,
        "spans_written": spans,
        "throughput_ratio": float(ours["per_s"]) / float(raw["per_s"]),  # type: ignore[arg-type]
        "p50_ratio": float(ours["p50_ms"]) / max(float(raw["p50_ms"]), 1e-9),  # type: ignore[arg-type]
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, row in (("relaybus", ours), ("raw nats-py", raw)):
            print(
                f"{name:<12} {row['runs']} runs x 3 hops: {row['per_s']:.0f} runs/s, "
                f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, lost {row['lost']}"
            )
        print(
            f"relaybus/raw throughput {out['throughput_ratio']:.2f}x, p50 latency "
            f"{out['p50_ratio']:.1f}x; failed {ours['failed']}, dead letters "
            f"{ours['dead_letters']}, runs charged {ours['charged_runs']}, spans {spans}"
        )
    lost = ours["lost"] or ours["failed"] or ours["dead_letters"] or raw["lost"]
    return 1 if lost or ours["charged_runs"] != args.runs else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
