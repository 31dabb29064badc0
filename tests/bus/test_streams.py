import pytest

from relaybus.bus import Bus, ProvisioningConflict, Settings, default_topology, ensure
from relaybus.bus.streams import StreamSpec, Topology, ensure_stream


async def test_provisioning_twice_changes_nothing(bus: Bus) -> None:
    # the fixture provisioned once already
    before = await bus.js.stream_info(bus.subjects.stream("TASKS"))
    created = await ensure(bus, default_topology(bus.subjects))
    after = await bus.js.stream_info(bus.subjects.stream("TASKS"))
    assert created == []
    assert before.config.as_dict() == after.config.as_dict()
    assert before.created == after.created


async def test_conflicting_existing_stream_is_reported_not_replaced(bus: Bus) -> None:
    name = bus.subjects.stream("EVENTS")
    conflicting = StreamSpec(
        name, (f"{bus.subjects.prefix}.event.>",), retention="limits", max_age_s=60
    )
    with pytest.raises(
        ProvisioningConflict, match=f"stream {name} exists with a different config.*max_age"
    ):
        await ensure_stream(bus, conflicting)
    info = await bus.js.stream_info(name)
    assert info.config.max_age == 7 * 86400  # untouched


async def test_conflicting_bucket_is_reported(bus: Bus) -> None:
    from relaybus.bus.streams import BucketSpec

    with pytest.raises(ProvisioningConflict, match=r"KV bucket .*history: has 1, spec wants 5"):
        await ensure(bus, Topology(buckets=(BucketSpec(bus.subjects.bucket("runs"), history=5),)))


async def test_the_audit_stream_refuses_delete_and_purge(bus: Bus) -> None:
    import nats.js.errors

    name = bus.subjects.stream("AUDIT")
    seq = await bus.publish_bytes(bus.subjects.audit("alice"), b'{"decision": "allow"}')
    with pytest.raises(nats.js.errors.APIError):
        await bus.js.purge_stream(name)
    with pytest.raises(nats.js.errors.APIError):
        await bus.js.delete_msg(name, seq)
    assert (await bus.js.stream_info(name)).state.messages == 1


async def test_status_counts_no_presence_entry_an_agent_forged(bus: Bus) -> None:
    import socket
    import time

    import msgspec

    from relaybus.bus.cli import AgentBeat, list_agents
    from relaybus.bus.kv import Bucket

    presence = await Bucket.open(bus, bus.subjects.bucket("presence"))
    now = time.time()
    beat = AgentBeat(name="a", pid=1, host="elsewhere", concurrency=1, started=now, beat_at=now)
    await presence.put("a.junk", b"not a beat")
    await presence.put(
        "a.huge",
        msgspec.json.encode(
            msgspec.structs.replace(beat, pid=2**63 - 1, host=socket.gethostname())
        ),
    )
    await presence.put("a.zero", msgspec.json.encode(msgspec.structs.replace(beat, pid=0)))
    await presence.put(
        "a.stale",
        msgspec.json.encode(msgspec.structs.replace(beat, beat_at=now - 600, interval_s=20.0)),
    )
    await presence.put("a.ok", msgspec.json.encode(beat))
    assert [(a["name"], a["replicas"]) for a in await list_agents(bus)] == [("a", 1)]


async def test_a_connection_nats_closed_for_good_stops_the_process_that_serves_on_it(
    settings: Settings,
) -> None:
    """After a protocol error nats-py closes its client and never reconnects: a service left up
    on it answered only errors. The Bus tells the process to stop (and exit 1), so its
    supervisor starts it again; a close of its own is not that."""
    import asyncio

    stop = asyncio.Event()
    doomed = Bus(settings, name="doomed")
    await doomed.__aenter__()
    try:
        doomed.stop_when_lost(stop)
        # past the subject check, raw: the server ends the connection (control line > 4 KiB)
        await doomed.nc.publish("x" * 5000, b"")
        await asyncio.wait_for(stop.wait(), 15)
        assert doomed.lost
    finally:
        await doomed.close()
    calm = asyncio.Event()
    async with Bus(settings, name="calm") as bus:
        bus.stop_when_lost(calm)
    assert not calm.is_set() and not bus.lost
