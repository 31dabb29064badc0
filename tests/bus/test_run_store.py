"""Run records in KV: a run's start marked `running` without holding the task up, never over
an end written meanwhile."""

from __future__ import annotations

import asyncio

import msgspec

from relaybus.bus import Bus, default_topology, ensure
from relaybus.bus.kv import Bucket
from relaybus.services.runs.state import Cancel, Finish, MarkRunning, RunRecord
from relaybus.services.runs.store import RunStore


async def stores(bus: Bus, n: int) -> list[RunStore]:
    await ensure(bus, default_topology(bus.subjects))
    bucket = await Bucket.open(bus, bus.subjects.bucket("runs"))
    return [RunStore(bucket) for _ in range(n)]


async def test_a_start_reads_the_record_and_marks_it_running_behind_the_task(bus: Bus) -> None:
    (store,) = await stores(bus, 1)
    await store.create(RunRecord(run_id="run-a", agent="echo"))
    record, changed = await store.change("run-a", MarkRunning(), "echo")
    assert record.status == "running" and changed
    await store.drain()
    assert (await store.get("run-a")).status == "running"  # type: ignore[union-attr]
    # the end, through the same store, starts from the revision the start wrote
    ended, changed = await store.change(
        "run-a", Finish(status="completed", result=msgspec.Raw(b"1")), "echo"
    )
    assert changed and ended.status == "completed" and ended.result == 1


class SlowWrites(Bucket):
    """A bucket whose writes reach the server late (a slow link, a busy process)."""

    async def update(self, key: str, value: bytes, revision: int) -> int:
        await asyncio.sleep(0.3)
        return await super().update(key, value, revision)


async def test_a_start_never_lands_over_an_end_or_a_cancel_written_meanwhile(bus: Bus) -> None:
    (ender,) = await stores(bus, 1)
    bucket = ender.bucket
    starter = RunStore(SlowWrites(bucket._kv, bucket.name))  # its `running` write comes late
    for run_id, other in (
        ("run-b", Finish(status="failed")),
        ("run-c", Cancel(reason="stop")),
    ):
        await starter.create(RunRecord(run_id=run_id, agent="echo"))
        await starter.change(run_id, MarkRunning(), "echo")
        await ender.change(run_id, other, "operator" if isinstance(other, Cancel) else "echo")
        await starter.drain()  # the late write: a CAS conflict, then nothing to change
        final = await RunStore(starter.bucket).get(run_id)
        assert final is not None and final.status in ("failed", "cancelled"), final
