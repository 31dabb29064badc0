"""Retry policy per agent: in the class (`retry = RetryPolicy(...)`) and on the command line
(`agent run --max-attempts N --backoff S`), over the global RELAYBUS_MAX_DELIVER."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from relaybus.agents.submit import submit
from relaybus.bus import Bus, RetryPolicy
from relaybus.bus.cli import read_dead_letters
from relaybus.bus.feed import EventFeed

from ..conftest import Spawn, consuming


async def test_an_agents_own_retry_policy_decides_its_attempts_and_their_spacing(
    bus: Bus, spawn: Spawn, tmp_path: Path
) -> None:
    assert bus.settings.max_deliver == 3
    log = tmp_path / "attempts"
    spawn("agents_for_tests:Flaky")
    await consuming(bus, "flaky")
    outcome = await submit(bus, "flaky", json.dumps({"log": str(log)}).encode(), wait=True)
    assert outcome.status == "failed" and "upstream is down" in str(outcome.error)
    tries = [float(t) for t in log.read_text().split()]
    assert len(tries) == 2  # the class's 2, not the settings' 3
    assert tries[1] - tries[0] >= 0.2
    await wait_for_letters(bus, 1)  # stored just after the failure reaches the run
    ((_, letter),) = await read_dead_letters(bus, 10)
    assert letter.attempts == 2 and letter.run_id == outcome.run_id


async def test_the_command_line_overrides_the_class(bus: Bus, spawn: Spawn, tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    spawn("agents_for_tests:Flaky", "--max-attempts", "4", "--backoff", "0.05")
    await consuming(bus, "flaky")
    outcome = await submit(bus, "flaky", json.dumps({"log": str(log)}).encode(), wait=True)
    assert outcome.status == "failed"
    assert len(log.read_text().split()) == 4
    # each later attempt is told apart from a takeover after a crash
    async with EventFeed(bus, outcome.run_id, replay=True) as feed:
        resumed = [e.detail for e in await feed.stored() if e.kind == "resumed"]
    assert resumed == ["retried after a failed attempt"] * 3


async def wait_for_letters(bus: Bus, count: int, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(await read_dead_letters(bus, 10)) < count:
        assert loop.time() < deadline, f"fewer than {count} dead letters after {timeout_s}s"
        await asyncio.sleep(0.1)


def test_a_policy_that_cannot_work_is_refused_by_what_is_wrong() -> None:
    import pytest

    from relaybus.bus import ConfigError

    with pytest.raises(ConfigError, match="at least 1 attempt"):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError, match="between 0 and its maximum"):
        RetryPolicy(backoff_s=60.0)
