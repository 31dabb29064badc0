"""A feed of new events never hands back what was stored before it began, even after nats-py
restarts its ordered consumer (which it does at sequence 1 when nothing was delivered yet)."""

from __future__ import annotations

from relaybus.bus import Bus, Event
from relaybus.bus.feed import EventFeed


async def test_a_feed_of_new_events_survives_an_ordered_consumer_restart(bus: Bus) -> None:
    old = Event(run_id="r1", kind="failed", detail="before the feed began")
    await bus.publish_event(old, durable=True)
    async with EventFeed(bus, "r1") as feed:
        jsi = feed._sub._sub._jsi  # what nats-py does when it misses a heartbeat or a sequence
        await jsi.reset_ordered_consumer(jsi._sseq + 1)
        assert await feed.next(1.0) is None
        await bus.publish_event(Event(run_id="r1", kind="completed"), durable=True)
        new = await feed.next(5.0)
    assert new is not None and new.kind == "completed"


async def test_a_feed_since_a_time_skips_older_events_after_a_restart(bus: Bus) -> None:
    await bus.publish_event(Event(run_id="r2", kind="started", time=1.0), durable=True)
    async with EventFeed(bus, "r2", since=2.0) as feed:
        await bus.publish_event(Event(run_id="r2", kind="step", time=3.0), durable=True)
        first = await feed.next(5.0)
        jsi = feed._sub._sub._jsi
        await jsi.reset_ordered_consumer(jsi._sseq + 1)
        assert await feed.next(1.0) is None
    assert first is not None and first.kind == "step"
