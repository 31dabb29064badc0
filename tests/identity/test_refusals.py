"""Refusals nobody authenticated for (bad tokens at the MCP or A2A door) are audited within
bounds: a flood cannot fill the audit stream or bury a user's trail, and nothing is hidden —
the next record says how many were not written one by one."""

from __future__ import annotations

from relaybus.bus import Bus
from relaybus.services.identity.client import read_audit
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.identity.refusals import RefusalAudit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(principal: str) -> AuditRecord:
    return AuditRecord(
        action="mcp/request", decision="deny", principal=principal, actor="mcp", reason="bad"
    )


async def test_a_flood_of_bad_tokens_claiming_a_user_is_bounded_and_counted(bus: Bus) -> None:
    clock = Clock()
    audit = RefusalAudit(bus, burst=5, window_s=60.0, clock=clock)
    written = [await audit(refused("alice")) for _ in range(40)]
    assert written.count(True) == 5
    assert len(await read_audit(bus, "alice", decision="deny")) == 5

    clock.now += 61  # the next window: the next refusal is written and says what was held back
    assert await audit(refused("alice"))
    records = await read_audit(bus, "alice", decision="deny")
    assert len(records) == 6
    assert records[-1].detail == {"not_recorded_before": 35}


async def test_claiming_many_users_is_bounded_in_total(bus: Bus) -> None:
    audit = RefusalAudit(bus, burst=5, total=30, clock=Clock())
    written = [await audit(refused(f"user{i}")) for i in range(100)]
    assert written.count(True) == 30
    assert [await audit(refused("alice"))] == [False]  # the window's total is spent


async def test_the_kinds_remembered_are_bounded(bus: Bus) -> None:
    audit = RefusalAudit(bus, burst=1, total=10_000, max_keys=50, clock=Clock())
    for i in range(500):
        await audit(refused(f"claimed{i}"))
    assert len(audit._per_key) == 50
