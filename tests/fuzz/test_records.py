"""Fuzzing what readers take from the events and dead-letter streams: anyone who may publish
there can store any bytes. A record that does not decode is skipped (with a log line) by every
event feed (`watch`, `publish --wait`, `trace`, the console) and by `dlq list`; `dlq replay`
refuses it, and refuses a letter that would put data anywhere but its agent's task subject."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relaybus.bus import Bus, Event, RelayError, Settings, new_id
from relaybus.bus.cli import read_dead_letters, replay_dead_letter
from relaybus.bus.events import DeadLetter, event_encoder
from relaybus.bus.feed import EventFeed

from ..conftest import ROOT, child_env
from .hostile import DEEP_JSON, DEEP_JSON_OBJECT, json_values

RECORDS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
junk = st.one_of(
    st.binary(max_size=200),
    json_values.map(msgspec.json.encode),
    st.sampled_from([b"", b"{", DEEP_JSON, DEEP_JSON_OBJECT, b'{"run_id": 1}', b'{"kind": "x"}']),
)


async def store(bus: Bus, subject: str, data: bytes) -> int:
    return await bus.publish_bytes(subject, data, {"Nats-Msg-Id": new_id()})


@RECORDS
@given(st.lists(junk, min_size=1, max_size=3))
@example([DEEP_JSON_OBJECT])  # regression: RecursionError out of EventFeed.next
@example([b"\xff"])  # regression: DecodeError out of EventFeed.next
async def test_event_feeds_skip_records_that_are_not_events(bus: Bus, records: list[bytes]) -> None:
    run_id = new_id()
    subject = bus.subjects.event(run_id, "completed")
    for data in records:
        await store(bus, subject, data)
    good = Event(run_id=run_id, kind="completed", detail="the real one")
    await store(bus, subject, event_encoder.encode(good))
    async with EventFeed(bus, run_id, replay=True) as feed:
        stored = await feed.stored()
    async with EventFeed(bus, run_id, replay=True) as feed:
        seen = []
        while (event := await feed.next(2.0)) is not None:
            seen.append(event)
            if event.detail == "the real one":
                break
    assert stored[-1].detail == "the real one"
    assert seen and seen[-1].detail == "the real one"


def letter(**over: object) -> bytes:
    fields: dict[str, object] = {
        "agent": "echo",
        "subject": "",
        "reason": "r",
        "attempts": 1,
        "time": 0.0,
        "data": b"{}",
    }
    fields.update(over)
    return msgspec.json.encode(DeadLetter(**fields))  # type: ignore[arg-type]


@RECORDS
@given(junk)
@example(DEEP_JSON_OBJECT)
async def test_dlq_list_skips_records_that_are_not_dead_letters(bus: Bus, data: bytes) -> None:
    real = letter(subject=bus.subjects.task("echo"), reason=f"real {new_id()}")
    await store(bus, bus.subjects.dlq("echo"), data)
    await store(bus, bus.subjects.dlq("echo"), real)
    listed = await read_dead_letters(bus, 10_000)
    assert listed[-1][1].reason == msgspec.json.decode(real)["reason"]


@pytest.mark.parametrize(
    "target",
    ["audit.alice", "ledger.entry.p0", "svc.ledger.hold", "task.other", "task.echo.x.y"],
)
async def test_dlq_replay_puts_data_back_only_on_the_agents_task_subject(
    bus: Bus, target: str
) -> None:
    # a forged letter aiming at the audit log, the ledger journal, a service, another agent
    seq = await store(
        bus, bus.subjects.dlq("echo"), letter(subject=f"{bus.subjects.prefix}.{target}")
    )
    with pytest.raises(RelayError, match="not echo's task subject"):
        await replay_dead_letter(bus, seq)


@pytest.mark.parametrize("data", [b"\xff", DEEP_JSON_OBJECT, b"{}"])
async def test_dlq_replay_refuses_a_record_that_is_not_a_dead_letter(bus: Bus, data: bytes) -> None:
    seq = await store(bus, bus.subjects.dlq("echo"), data)
    with pytest.raises(RelayError, match=f"dead letter {seq} is not"):
        await replay_dead_letter(bus, seq)


@pytest.mark.parametrize("seq", [0, -1, 2**64, 10**23])
async def test_dlq_replay_of_an_id_no_stream_has_says_so(bus: Bus, seq: int) -> None:
    # (the server answered 0 and -1 with a bad request, shown as a traceback)
    with pytest.raises(RelayError, match=f"no dead letter with id {seq}; `relaybus dlq list`"):
        await replay_dead_letter(bus, seq)


async def test_the_cli_reads_streams_holding_hostile_records(bus: Bus, settings: Settings) -> None:
    run_id = new_id()
    for data in [b"\xff", DEEP_JSON_OBJECT, b"[]"]:
        await store(bus, bus.subjects.event(run_id, "failed"), data)
        await store(bus, bus.subjects.dlq("echo"), data)
    await store(
        bus,
        bus.subjects.event(run_id, "failed"),
        event_encoder.encode(Event(run_id=run_id, kind="failed", detail="real")),
    )
    await store(bus, bus.subjects.dlq("echo"), letter(subject=bus.subjects.task("echo")))
    bad_seq = await store(bus, bus.subjects.dlq("echo"), b"\xff")
    env = child_env(settings)
    commands = {
        "watch": ["watch", "--run", run_id, "--limit", "1", "--json"],
        "list": ["dlq", "list", "--json"],
        "replay": ["dlq", "replay", str(bad_seq)],
    }
    runs = {
        name: subprocess.run(
            [sys.executable, "-m", "relaybus.cli", *argv],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        for name, argv in commands.items()
    }
    for name, done in runs.items():
        assert b"Traceback" not in done.stderr, (name, done.stderr.decode()[-2000:])
    assert runs["watch"].returncode == 0
    assert json.loads(runs["watch"].stdout)["kind"] == "failed"
    assert runs["list"].returncode == 0
    rows = json.loads(runs["list"].stdout)
    assert [row["reason"] for row in rows] == ["r"]
    assert runs["replay"].returncode == 1
    assert runs["replay"].stderr.decode().strip().splitlines()[-1].startswith("error: dead letter")
