"""Ids a caller controls, too long for NATS: refused before they reach the server, which would
end the connection (and nats-py then closes the client for good: one huge A2A task id or
review run id broke a gateway or the console for every user). The gateway and console cases
are in tests/agent2agent/test_secure.py and tests/console/test_access.py."""

from __future__ import annotations

import pytest

from relaybus.bus import Bus, SubjectInvalid
from relaybus.bus.kv import Bucket


async def test_a_key_or_subject_too_long_is_refused_and_the_connection_lives_on(bus: Bus) -> None:
    """nats-server ends a connection whose control line passes 4 KiB, and nats-py then closes
    the client for good: one huge id from a caller broke a gateway for everyone."""
    runs = await Bucket.open(bus, bus.subjects.bucket("runs"))
    with pytest.raises(SubjectInvalid, match="characters; at most 512"):
        await runs.get("x" * 4000)
    with pytest.raises(SubjectInvalid, match="characters; at most 1024"):
        await bus.publish_bytes(f"{bus.subjects.prefix}.event." + "x" * 4000, b"{}")
    await runs.put("still-here", b"1")
    assert await runs.get("still-here") is not None and bus.nc.is_connected
