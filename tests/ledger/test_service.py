"""The ledger service as a real process over a real server: exactness, crashes, fencing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from relaybus.bus import Bus, ConnectionFailed, Settings, default_topology, ensure, rpc
from relaybus.bus.streams import read_subject
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import BudgetExceeded, LedgerError
from relaybus.services.ledger.model import Entry, State, apply
from relaybus.services.ledger.ops import Budget, Capture, Hold, SetBudget, Transfer
from relaybus.services.ledger.service import LedgerWriter, Snapshot, WriterFenced
from relaybus.services.ledger.snapshots import Manifest, SnapshotStore

from ..conftest import ROOT, child_env


class LedgerProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", "service", "ledger"],
            env=child_env(self.settings),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)


@pytest.fixture
def ledger_proc(settings: Settings) -> Iterator[LedgerProcess]:
    proc = LedgerProcess(settings)
    proc.start()
    yield proc
    proc.stop()


async def ready(ledger: LedgerClient) -> None:
    for _ in range(150):  # bounded: the service process is starting
        try:
            await ledger.query("ping")
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError("ledger did not answer")


@pytest.fixture
async def ledger(bus: Bus, ledger_proc: LedgerProcess) -> AsyncIterator[LedgerClient]:
    client = LedgerClient(bus)
    await ready(client)
    yield client


async def journal(bus: Bus) -> list[list[Entry]]:
    """The partition's journal, one list of entries per append (a group commit holds many)."""
    appends = []
    for _, data in await read_subject(
        bus, bus.subjects.stream("LEDGER"), f"{bus.subjects.prefix}.ledger.entry.p0"
    ):
        decoded = msgspec.msgpack.decode(data, type=Entry | list[Entry])
        appends.append(decoded if isinstance(decoded, list) else [decoded])
    return appends


async def replayed(bus: Bus) -> State:
    state = State()
    for append in await journal(bus):
        for entry in append:
            apply(state, entry)
    return state


def long_hold(i: int, payer: str, amount: int) -> Hold:
    """A hold with the long ids and tags a real agent's run gives it (hundreds of bytes)."""
    return Hold(
        id=f"hold-{i:04d}-of-a-long-running-agent",
        amount=amount,
        payer=payer,
        payee="tool:search",
        levels=[payer, f"run:RUN{i:04d}"],
        tags={"run": f"RUN{i:04d}", "agent": "research", "tool": "search"},
    )


async def test_32_spender_processes_never_overspend(
    bus: Bus, ledger: LedgerClient, settings: Settings
) -> None:
    await ledger.set_budget("b1", Budget(level="run:R32", limit=1000))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ledger_spender", "R32", "7"],
            env=child_env(settings),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(32)
    ]
    totals = [int(p.communicate(timeout=240)[0].strip() or 0) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    spent = sum(totals)
    assert spent <= 1000 and 1000 - spent < 7  # used up to the last possible unit, never over
    levels = {row["level"]: row for row in await ledger.query("levels", level="run:R32")}
    assert levels["run:R32"]["spent"] == spent and levels["run:R32"]["held"] == 0
    assert (await replayed(bus)).levels["run:R32"].spent == spent


async def test_kill9_between_hold_and_capture_loses_nothing(
    bus: Bus, ledger: LedgerClient, ledger_proc: LedgerProcess
) -> None:
    await ledger.set_budget("b1", Budget(level="user:alice", limit=500))
    await ledger.hold("h1", "user:alice", "tool:x", 300, ["user:alice"])
    ledger_proc.kill9()
    ledger_proc.start()
    await ready(ledger)
    # the acknowledged hold survived: capturing it works, once
    assert (await ledger.capture("c1", "h1", 250))["captured"] == 250
    assert (await ledger.capture("c1", "h1", 250))["captured"] == 250  # retried: same result
    with pytest.raises(BudgetExceeded):
        await ledger.hold("h2", "user:alice", "tool:x", 251, ["user:alice"])
    balances = {row["account"]: row["balance"] for row in await ledger.query("balance")}
    assert balances == {"user:alice": -250, "tool:x": 250}
    assert (await replayed(bus)).balances == balances


async def test_kill9_during_a_stream_of_captures(
    bus: Bus, ledger: LedgerClient, ledger_proc: LedgerProcess
) -> None:
    for i in range(40):
        await ledger.hold(f"h{i}", "user:bob", "tool:x", 10, ["user:bob"])

    async def capture_all() -> None:
        for i in range(40):
            try:
                await ledger.capture(f"c{i}", f"h{i}", 10)
            except Exception:
                return  # the ledger died: a client retries the rest below (one wait, not 40)

    task = asyncio.create_task(capture_all())
    await asyncio.sleep(0.05)
    ledger_proc.kill9()
    await task
    ledger_proc.start()
    await ready(ledger)
    for i in range(40):  # a client retries with the same ids: nothing is applied twice
        await ledger.capture(f"c{i}", f"h{i}", 10)
    balances = {row["account"]: row["balance"] for row in await ledger.query("balance")}
    assert balances == {"user:bob": -400, "tool:x": 400}
    assert (await replayed(bus)).balances == balances


async def test_a_second_writer_on_the_partition_is_refused(bus: Bus) -> None:
    first, second = LedgerWriter(bus), LedgerWriter(bus)
    await first.rebuild()
    await second.rebuild()
    await first.write(Transfer(id="t1", payer="a", payee="b", amount=5))
    with pytest.raises(WriterFenced, match="another ledger writer owns partition p0"):
        await second.write(Transfer(id="t2", payer="a", payee="b", amount=5))
    assert second.failed.is_set()
    assert (await replayed(bus)).balances == {"a": -5, "b": 5}


async def test_bad_requests_over_the_wire_are_refused_clearly(
    bus: Bus, ledger: LedgerClient
) -> None:
    subject = f"{bus.subjects.prefix}.svc.ledger.hold"
    bad = {"kind": "hold", "id": "x", "payer": "user:a", "payee": "tool:b", "amount": 1.5}
    with pytest.raises(LedgerError, match="Expected `int`, got `float`"):
        await rpc.call(bus, subject, bad)
    with pytest.raises(LedgerError, match="overflows"):
        await rpc.call(bus, subject, {**bad, "amount": 2**60})
    with pytest.raises(LedgerError, match="unknown ledger operation"):
        await rpc.call(bus, f"{bus.subjects.prefix}.svc.ledger.steal", {})
    with pytest.raises(LedgerError, match="missing required field `payee`"):
        await rpc.call(bus, subject, {"id": "y", "payer": "user:a", "amount": 1})
    with pytest.raises(LedgerError, match="may not carry `transfer`; its fields are amount, "):
        await rpc.call(bus, subject, {**bad, "amount": 1, "transfer": ""})  # even empty
    assert await ledger.query("balance") == []


async def test_a_request_body_is_the_operation_s_fields_the_subject_names_it(
    bus: Bus, ledger: LedgerClient
) -> None:
    """What a client in any language sends: `{id, payer, …}` on `svc.ledger.hold`, no `kind`."""
    held = await rpc.call(
        bus,
        f"{bus.subjects.prefix}.svc.ledger.hold",
        {"id": "plain", "payer": "user:p", "payee": "tool:x", "amount": 7},
    )
    assert held["kind"] == "hold" and held["amount"] == 7
    await rpc.call(
        bus,
        f"{bus.subjects.prefix}.svc.ledger.capture",
        {"id": "pc", "transfer": "plain", "amount": 5},
    )
    assert {b["account"]: b["balance"] for b in await ledger.query("balance")} == {
        "user:p": -5,
        "tool:x": 5,
    }


async def test_kill9_nats_server_and_restart_keeps_every_acknowledged_entry(
    tmp_path: Path, prefix: str
) -> None:
    from relaybus.bus import NatsServer
    from relaybus.bus.server import free_port

    store, port = tmp_path / "store", free_port()
    server = NatsServer(store, port=port).start()
    settings = Settings.from_env({}, nats_url=server.url, prefix=prefix, home=tmp_path / "home")
    ledger_proc = LedgerProcess(settings)
    try:
        async with Bus(settings, name="test") as bus:
            await ensure(bus, default_topology(bus.subjects))
            ledger_proc.start()
            client = LedgerClient(bus)
            await ready(client)
            await client.set_budget("b", Budget(level="user:dana", limit=100))
            await client.hold("h1", "user:dana", "tool:x", 40, ["user:dana"])
            await client.capture("c1", "h1", 40)
            await client.hold("h2", "user:dana", "tool:x", 60, ["user:dana"])
            server.kill()  # kill -9, file storage
            server = NatsServer(store, port=port).start()
            await ready(client)  # both the ledger and this client reconnect
            assert (await client.capture("c2", "h2", 60))["captured"] == 60
            with pytest.raises(BudgetExceeded):
                await client.hold("h3", "user:dana", "tool:x", 1, ["user:dana"])
            ledger_proc.kill9()  # and a cold rebuild from the journal agrees
            ledger_proc.start()
            await ready(client)
            balances = {row["account"]: row["balance"] for row in await client.query("balance")}
            assert balances == {"user:dana": -100, "tool:x": 100}
            assert (await replayed(bus)).balances == balances
    finally:
        ledger_proc.stop()
        server.stop()


async def test_a_spend_spike_raises_an_alert_event(bus: Bus) -> None:
    from relaybus.bus.feed import EventFeed

    now = [1_800_000_000.0]
    writer = LedgerWriter(bus, clock=lambda: now[0])  # the clock is injected, never sent
    await writer.rebuild()
    t0 = now[0]
    for minute in range(10):  # a steady baseline: 10 units a minute
        now[0] = t0 + minute * 60
        await writer.write(
            Hold(
                id=f"h{minute}",
                amount=10,
                payer="user:eve",
                payee="tool:x",
                tags={"run": "RUNSPIKE"},
            )
        )
        now[0] += 1
        await writer.write(Capture(id=f"c{minute}", transfer=f"h{minute}", amount=10))
    async with EventFeed(bus, "RUNSPIKE", replay=True) as feed:
        now[0] = t0 + 10 * 60 + 30
        await writer.write(
            Hold(
                id="burst",
                amount=100,
                payer="user:eve",
                payee="tool:x",
                tags={"run": "RUNSPIKE"},
            )
        )
        now[0] += 1
        await writer.write(Capture(id="burst-c", transfer="burst", amount=100))
        event = await feed.next(5)
    assert event is not None and event.kind == "alert"
    assert "spend spike: user:eve spent 100 in the last minute" in event.detail


async def test_rebuild_starts_from_the_latest_snapshot(bus: Bus) -> None:
    writer = LedgerWriter(bus, snapshot_every=10)
    await writer.rebuild()
    await writer.write(SetBudget(id="b", budget=Budget(level="user:f", limit=10_000)))
    for i in range(24):
        await writer.write(
            Hold(id=f"h{i}", amount=3, payer="user:f", payee="tool:x", levels=["user:f"])
        )
        if i % 2:
            await writer.write(Capture(id=f"c{i}", transfer=f"h{i}", amount=2))
    fresh = LedgerWriter(bus)
    replayed_after_snapshot = await fresh.rebuild()
    assert replayed_after_snapshot < 10  # not the 37 entries of the whole journal
    assert fresh.state.balances == writer.state.balances == {"user:f": -24, "tool:x": 24}
    assert fresh.state.levels == writer.state.levels
    assert fresh.last_seq == writer.last_seq
    await fresh.write(
        Capture(id="c0", transfer="h0", amount=3)
    )  # and it writes on, fenced correctly
    assert fresh.state.balances["tool:x"] == 27


async def test_a_snapshot_many_times_the_payload_limit_is_kept_in_chunks(
    settings: Settings,
) -> None:
    # Given a payload limit of 32 KB and a state whose compressed snapshot is several times that
    small = settings.model_copy(update={"max_payload_bytes": 32_768})
    async with Bus(small, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        writer = LedgerWriter(bus, snapshot_every=1_000_000)
        await writer.rebuild()
        for i in range(800):
            await writer.write(long_hold(i, "user:frank", 3))
        store = await SnapshotStore.open(bus, "p0")
        raw = msgspec.msgpack.encode(writer.state)
        assert len(zlib.compress(raw, 6)) > 2 * small.max_payload_bytes
        # When it snapshots (twice: the second goes to the other slot), then a fresh writer
        # rebuilds
        await writer.snapshot()
        await writer.write(long_hold(800, "user:frank", 3))
        await writer.snapshot()
        fresh = LedgerWriter(bus)
        replayed = await fresh.rebuild()
        # Then the rebuild started from the latest snapshot, not from the whole journal
        assert replayed == 0
        assert fresh.state.levels == writer.state.levels
        assert fresh.state.holds == writer.state.holds
        assert fresh.last_seq == writer.last_seq
        # And a snapshot with a chunk lost is not believed: the whole journal rebuilds the same
        found = await store.bucket.get("p0")
        assert found is not None
        manifest = msgspec.msgpack.decode(found[0][1:], type=Manifest)
        assert manifest.latest.slot == "b" and manifest.latest.chunks >= 3
        assert manifest.previous is not None and manifest.previous.slot == "a"
        # (the latest with a chunk lost: the one before it, and the journal after it)
        await store.bucket.delete(f"p0.b.{manifest.latest.chunks - 1}")
        again = LedgerWriter(bus)
        assert await again.rebuild() == 1
        assert again.state.levels == writer.state.levels and again.last_seq == writer.last_seq
        # (neither whole: the whole journal)
        await store.bucket.delete("p0.a.0")
        cold = LedgerWriter(bus)
        assert await cold.rebuild() == 801
        assert cold.state.levels == writer.state.levels and cold.last_seq == writer.last_seq
        # And two writers storing at once: one switches the manifest, the other learns it lost
        stores = [await SnapshotStore.open(bus, "p0") for _ in range(2)]
        raw = msgspec.msgpack.encode(Snapshot(seq=writer.last_seq, state=writer.state))
        counts = await asyncio.gather(*(s.store(writer.last_seq, raw) for s in stores))
        assert sorted(c > 0 for c in counts) in ([False, True], [True, True])
        assert await LedgerWriter(bus).rebuild() == 0  # a whole snapshot either way


async def test_kill9_mid_group_commit_loses_nothing_acknowledged_and_applies_nothing_twice(
    bus: Bus, ledger: LedgerClient, ledger_proc: LedgerProcess
) -> None:
    # Given 64 spenders on one connection, whose holds and captures go out in shared batches
    spenders, steps = 64, 12
    await ledger.set_budget("b-gc", Budget(level="run:GC", limit=spenders * steps * 10))
    acknowledged: list[str] = []

    async def until_answered(send: object) -> dict[str, object]:
        for _ in range(100):  # bounded: the ledger is restarted below
            try:
                return await send()  # type: ignore[operator,no-any-return]
            except (LedgerError, ConnectionFailed):
                await asyncio.sleep(0.1)
        raise AssertionError("the ledger never answered again")

    async def spender(n: int) -> None:
        for i in range(steps):
            op = f"{n}-{i}"
            await until_answered(
                lambda op=op: ledger.hold(f"h{op}", "user:gc", "tool:x", 10, ["run:GC"])
            )
            acknowledged.append(f"h{op}")
            await until_answered(lambda op=op: ledger.capture(f"c{op}", f"h{op}", 10))
            acknowledged.append(f"c{op}")

    running = asyncio.gather(*(spender(n) for n in range(spenders)))
    # When the writer is killed -9 while batches are in flight, and started again
    while len(acknowledged) < spenders * steps // 2:
        await asyncio.sleep(0.01)
    ledger_proc.kill9()
    before_restart = set(acknowledged)
    ledger_proc.start()
    await asyncio.wait_for(running, 120)
    # Then every decision acknowledged before the kill is in the journal, each exactly once
    entries = [entry for append in await journal(bus) for entry in append]
    ids = [entry.op.id for entry in entries]
    assert before_restart <= set(ids)
    assert len(ids) == len(set(ids)), "an operation was applied twice"
    # and every spender's retries completed the rest: all captured once, nothing overspent
    levels = {row["level"]: row for row in await ledger.query("levels", level="run:GC")}
    assert levels["run:GC"]["spent"] == spenders * steps * 10 and levels["run:GC"]["held"] == 0
    assert (await replayed(bus)).balances["tool:x"] == spenders * steps * 10
    # and the journal took fewer appends than decisions: they were group-committed
    appends = await journal(bus)
    assert max(len(a) for a in appends) > 1 and len(appends) < len(entries)


async def test_a_snapshot_taken_while_decisions_wait_for_the_journal_holds_only_stored_ones(
    bus: Bus,
) -> None:
    # Given a writer deciding 120 holds at once, with snapshots asked for in between
    writer = LedgerWriter(bus, snapshot_every=1_000_000)
    await writer.rebuild()
    await writer.write(SetBudget(id="b", budget=Budget(level="user:s", limit=100_000)))

    async def hold(i: int) -> None:
        await writer.write(
            Hold(id=f"h{i}", amount=3, payer="user:s", payee="tool:x", levels=["user:s"])
        )

    work = []
    for i in range(120):
        work.append(hold(i))
        if i % 10 == 5:
            work.append(writer.snapshot())
    await asyncio.gather(*work)
    # When a fresh writer rebuilds from the latest snapshot and the journal after it
    fresh = LedgerWriter(bus)
    await fresh.rebuild()
    # Then no hold is counted twice (a snapshot never ran ahead of the journal)
    assert fresh.state.levels == writer.state.levels
    assert fresh.state.levels["user:s"].held == 360


async def test_a_group_commit_larger_than_one_message_is_stored_in_several_appends(
    settings: Settings,
) -> None:
    # Given a payload limit of 32 KB and 200 decisions made at once (~4 times that encoded)
    small = settings.model_copy(update={"max_payload_bytes": 32_768})
    async with Bus(small, name="test") as bus:
        await ensure(bus, default_topology(bus.subjects))
        writer = LedgerWriter(bus)
        await writer.rebuild()
        ops = [long_hold(i, "user:gina", 1) for i in range(200)]
        outcomes = await writer.write_many(ops)
        # Then every one is decided and stored, over more than one journal message
        assert not [o for o in outcomes if isinstance(o, BaseException)]
        appends = await journal(bus)
        assert len(appends) > 1
        assert sum(len(a) for a in appends) == 200
        assert (await replayed(bus)).levels == writer.state.levels


async def test_concurrent_holds_with_callers_cancelled_midway_leave_no_one_waiting(
    bus: Bus, ledger: LedgerClient
) -> None:
    # Given 300 holds asked at once through one connection, every third caller giving up
    await ledger.set_budget("bc", Budget(level="user:cx", limit=1_000_000))

    def hold(i: int) -> asyncio.Task[dict[str, object]]:
        return asyncio.ensure_future(ledger.hold(f"hc{i}", "user:cx", "tool:x", 2, ["user:cx"]))

    for wave in range(3):  # bounded: three waves, each after the one before is answered
        tasks = [hold(wave * 300 + i) for i in range(300)]
        await asyncio.sleep(0)
        for task in tasks[::3]:
            task.cancel()
        # Then every caller that stayed gets its answer, wave after wave (no batch sender is
        # lost, no slot stays taken)
        _, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending
        kept = [t for i, t in enumerate(tasks) if i % 3]
        assert all(not t.cancelled() and t.exception() is None for t in kept)
    held = {row["level"]: row for row in await ledger.query("levels", level="user:cx")}
    assert 2 * 600 <= held["user:cx"]["held"] <= 2 * 900
