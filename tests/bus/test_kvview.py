"""A KV bucket read from memory (bus/kvview.py): reads cost no message while the copy is live,
another connection's write reaches it, and after the server restarts (a write it could not
watch) it asks the server until it has caught up again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from relaybus.bus import Bus, NatsServer, Settings, default_topology, ensure
from relaybus.bus.kv import Bucket
from relaybus.bus.kvview import WatchedBucket
from relaybus.bus.server import free_port

from ..conftest import wait_for


async def requests_while(bus: Bus, action: object) -> list[str]:
    """The JetStream API requests (gets included) on this test's buckets made while `action`
    runs (the server is shared: other clients' requests are not counted)."""
    seen: list[str] = []

    async def note(msg: object) -> None:
        if f"KV_{bus.subjects.prefix}_" in msg.subject:  # type: ignore[attr-defined]
            seen.append(msg.subject)  # type: ignore[attr-defined]

    sub = await bus.nc.subscribe("$JS.API.>", cb=note)
    await bus.nc.flush()
    await action()  # type: ignore[operator]
    await bus.nc.flush()
    await asyncio.sleep(0.1)
    await sub.unsubscribe()
    return seen


async def watch_consumer(evil: Bus, stream: str) -> dict[str, Any]:
    """The one consumer on `stream`: the watch, as a local process can list it."""
    listed = await evil.nc.request(f"$JS.API.CONSUMER.LIST.{stream}", b"{}", timeout=5)
    (consumer,) = json.loads(listed.data)["consumers"]
    return dict(consumer)


async def filter_nothing(evil: Bus, bucket: str, consumer: dict[str, Any]) -> None:
    """Change the watch consumer to deliver nothing (nats-py never notices)."""
    config = {**consumer["config"], "filter_subject": f"$KV.{bucket}.nothing"}
    config.pop("filter_subjects", None)
    stream = f"KV_{bucket}"
    await evil.nc.request(
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer['name']}",
        json.dumps({"stream_name": stream, "config": config, "action": "update"}).encode(),
        timeout=5,
    )


async def test_reads_cost_no_message_and_other_writers_reach_the_copy(bus: Bus) -> None:
    name = bus.subjects.bucket("agents")
    plain = await Bucket.open(bus, name)
    await plain.put("agent.a", b"one")
    async with (
        Bus(bus.settings, name="other") as other,
        WatchedBucket(plain, bus.nc) as agents,
        WatchedBucket(
            await Bucket.open(bus, bus.subjects.bucket("revoked")), bus.nc, misses="absent"
        ) as revoked,
    ):
        await wait_for(lambda: agents.live() and revoked.live(), 10)

        async def reads() -> None:
            for _ in range(20):
                assert await agents.get("agent.a") == (b"one", (await agents.get("agent.a"))[1])  # type: ignore[index]
                assert await revoked.get("agent.a") is None  # not revoked: the copy says so

        # When the copy is live, reads answer from memory
        assert await requests_while(bus, reads) == []
        # And a write on another connection reaches it (a revocation by another replica)
        await (await Bucket.open(other, bus.subjects.bucket("revoked"))).put("agent.a", b"stolen")
        await (await Bucket.open(other, name)).put("agent.a", b"two")

        async def seen() -> bool:
            return (
                await revoked.get("agent.a") is not None
                and (await agents.get("agent.a"))[0] == b"two"
            )  # type: ignore[index]

        for _ in range(100):  # bounded: 5 s
            if await seen():
                break
            await asyncio.sleep(0.05)
        assert await seen()
        # And a key the copy does not hold is asked of the server where misses are read
        await (await Bucket.open(other, name)).put("agent.b", b"new")
        assert (await agents.get("agent.b"))[0] == b"new"  # type: ignore[index]
        # And a write through the copy reads back at once
        await revoked.put("agent.c", b"revoked")
        assert await revoked.get("agent.c") is not None


async def test_after_a_server_restart_the_copy_asks_the_server_until_it_caught_up(
    tmp_path: Path, prefix: str
) -> None:
    store, port = tmp_path / "store", free_port()
    server = NatsServer(store, port=port).start()
    settings = Settings.from_env(
        {}, nats_url=server.url, prefix=prefix, home=tmp_path / "home", nats_auth=False
    )
    try:
        async with Bus(settings, name="reader") as bus:
            await ensure(bus, default_topology(bus.subjects))
            name = bus.subjects.bucket("revoked")
            async with WatchedBucket(
                await Bucket.open(bus, name), bus.nc, misses="absent"
            ) as revoked:
                await wait_for(revoked.live, 10)
                assert await revoked.get("user.mallory") is None
                # When the server restarts and someone revokes mallory before this reader is back
                server.stop()
                server = NatsServer(store, port=port).start()
                async with Bus(settings, name="writer") as writer:
                    await (await Bucket.open(writer, name)).put("user.mallory", b"revoked")
                await wait_for(lambda: bus.nc.is_connected, 20)
                # Then the reader never answers from the copy it had before: the revocation holds
                assert not revoked.live() or await revoked.get("user.mallory") is not None
                assert await revoked.get("user.mallory") is not None
                # And it follows the bucket again: reads come from memory once it caught up
                await wait_for(revoked.live, 20)
                assert await requests_while(bus, lambda: revoked.get("user.mallory")) == []
    finally:
        server.stop()


@pytest.mark.parametrize("tamper", ["filter_nothing", "delete_consumer", "recreate_stream"])
async def test_a_watch_someone_else_broke_stops_answering_within_its_lag(
    bus: Bus, tamper: str
) -> None:
    """nats-py does not notice its watch consumer changed to deliver nothing, deleted, or its
    stream re-created; the check of the stream's last sequence does, so a revocation written
    after the tampering is never answered "not revoked" past the lag the copy allows."""
    name = bus.subjects.bucket("revoked")
    stream = f"KV_{name}"
    async with (
        Bus(bus.settings, name="evil") as evil,
        WatchedBucket(
            await Bucket.open(bus, name), bus.nc, misses="absent", check_s=0.1, max_lag_s=0.5
        ) as revoked,
    ):
        await wait_for(revoked.live, 10)
        assert await revoked.get("user.mallory") is None
        # Given a local process that breaks the watch
        consumer = await watch_consumer(evil, stream)
        if tamper == "filter_nothing":
            await filter_nothing(evil, name, consumer)
        elif tamper == "delete_consumer":
            await evil.nc.request(
                f"$JS.API.CONSUMER.DELETE.{stream}.{consumer['name']}", b"", timeout=5
            )
        else:
            await evil.js.delete_stream(stream)
            await ensure(evil, default_topology(evil.subjects))
        # When mallory is revoked after it
        await (await Bucket.open(evil, name)).put("user.mallory", b"revoked")
        # Then within the copy's lag (and a check) every answer says so
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.5 + 0.3
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert await revoked.get("user.mallory") is not None
        # And it follows the bucket again, from memory
        await wait_for(revoked.live, 10)
        assert await revoked.get("user.mallory") is not None


async def test_a_late_check_is_made_good_by_asking_and_a_broken_watch_is_not(bus: Bus) -> None:
    """A busy process whose check came late asks the stream (`confirm`) and is live again; a
    watch that missed a write is not confirmed, however often it asks."""
    name = bus.subjects.bucket("revoked")
    stream = f"KV_{name}"
    async with (
        Bus(bus.settings, name="evil") as evil,
        # checks so rare that the copy lapses between them (a process too busy to check)
        WatchedBucket(
            await Bucket.open(bus, name), bus.nc, misses="absent", check_s=60, max_lag_s=0.3
        ) as revoked,
    ):
        await wait_for(revoked.live, 10)
        await asyncio.sleep(0.5)
        assert not revoked.live()
        # When asked, a complete copy is confirmed at once
        assert await revoked.confirm(2.0)
        assert revoked.live()
        # But after its watch was made to deliver nothing and a revocation was written
        await filter_nothing(evil, name, await watch_consumer(evil, stream))
        await (await Bucket.open(evil, name)).put("user.mallory", b"revoked")
        await asyncio.sleep(0.5)
        # Then asking does not confirm it, and the revocation is never answered "absent"
        assert not await revoked.confirm(1.0)
        assert await revoked.get("user.mallory") is not None


class MarkerFirst:
    """A real nats-py watch whose "initial values done" marker is handed over before the
    entries the server sent, the order a loaded machine produces (nats-py's consumer info came
    back first; CI saw it) and that cannot be forced from outside."""

    def __init__(self, watcher: Any) -> None:
        self._watcher = watcher
        self._sub = watcher._sub
        self._marker_sent = False

    async def __anext__(self) -> Any:
        if not self._marker_sent:
            self._marker_sent = True
            return None
        while (entry := await self._watcher.__anext__()) is None:
            pass  # the real marker, after the entries: already handed over
        return entry

    async def stop(self) -> None:
        await self._watcher.stop()


async def test_a_catch_up_marker_ahead_of_the_entries_is_not_believed(bus: Bus) -> None:
    from relaybus.bus.kv import Watch

    bucket = await Bucket.open(bus, bus.subjects.bucket("revoked"))
    for key in ("agent-a", "agent-b", "user-c"):
        await bucket.put(key, b"revoked")
    watch = Watch(MarkerFirst(await bucket._kv.watchall()))
    caught_up_after = []
    for _ in range(3):
        await asyncio.wait_for(watch.__anext__(), 10)
        caught_up_after.append(watch.caught_up)
    # Then the watch said it had caught up only with the last entry the bucket held: a copy
    # built from it never answered "not revoked" from an empty start
    assert caught_up_after == [False, False, True]
    await watch.stop()
    # and an empty bucket's marker is believed (its consumer delivered nothing)
    empty = await Bucket.open(bus, bus.subjects.bucket("reviews"))
    watch = await empty.watch()
    following = asyncio.create_task(watch.__anext__())
    await asyncio.wait_for(watch.caught_up_event.wait(), 10)
    await empty.put("r1", b"{}")
    assert await asyncio.wait_for(following, 10) == ("r1", b"{}")
    await watch.stop()
