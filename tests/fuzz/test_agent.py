"""End to end: hostile bytes and structurally valid but wrong envelopes published straight to
a real echo agent's task subject. The process stays up, every hostile message ends somewhere
on record — a dead letter with its reason, the run's terminal event, or a logged refusal — and
the good tasks published around them still complete."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relaybus.agents.messages import ChildResult, Signal, SignalBody, TimerFired
from relaybus.agents.submit import submit
from relaybus.bus import Bus, Envelope, Settings, encode, new_envelope, new_id, to_message
from relaybus.bus.events import DeadLetter, Event, dead_letter_decoder, event_decoder
from relaybus.services.runs.state import ENDED

from ..conftest import ROOT, child_env, wait_for
from .hostile import DEEP_JSON, DEEP_MSGPACK, HUGE_ARRAY_HEADER, envelopes, mutations

MAX_PAYLOAD = 8192
AGENT = "echo"
E2E = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def settings(settings: Settings) -> Settings:  # the `bus` fixture uses these too
    return settings.model_copy(update={"max_payload_bytes": MAX_PAYLOAD})


class Record:
    """Everything the agent puts on record: dead letters (by our Fuzz-Id header) and events."""

    def __init__(self) -> None:
        self.letters: dict[str, DeadLetter] = {}
        self.events: dict[str, list[Event]] = defaultdict(list)
        self.changed = asyncio.Event()

    async def on_letter(self, data: bytes) -> None:
        letter = dead_letter_decoder.decode(data)
        self.letters[letter.headers.get("Fuzz-Id", "")] = letter
        self.changed.set()

    async def on_event(self, data: bytes) -> None:
        event = event_decoder.decode(data)
        self.events[event.run_id].append(event)
        self.changed.set()


@pytest.fixture
async def record(bus: Bus) -> AsyncIterator[Record]:
    found = Record()
    subs = [
        await bus.subscribe(bus.subjects.dlq_all(), found.on_letter),
        await bus.subscribe(bus.subjects.events_of(), found.on_event),
    ]
    yield found
    for sub in subs:
        await sub.unsubscribe()


@pytest.fixture
def echo(settings: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`relaybus agent run agents.demo.echo:Echo`, its log in a file; stopped by its pid."""
    log = tmp_path / "echo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relaybus.cli",
                "agent",
                "run",
                "relaybus.agents.demo.echo:Echo",
            ],
            env=child_env(settings),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def good_task(bus: Bus, value: int) -> None:
    outcome = await submit(bus, AGENT, json.dumps({"n": value}).encode(), wait=True, timeout_s=30)
    assert outcome.status == "completed" and outcome.result == {"n": value}, outcome


@pytest.fixture
async def running_echo(
    bus: Bus, echo: tuple[subprocess.Popen[bytes], Path], record: Record
) -> tuple[subprocess.Popen[bytes], Path]:
    await good_task(bus, 0)  # the agent is up and consuming
    return echo


def settled(record: Record, fuzz_id: str, env: Envelope | None, log: Path) -> str:
    """How a hostile message ended, or '' while it has not."""
    letter = record.letters.get(fuzz_id)
    if letter is not None:  # a message that can never be handled is refused at once
        assert letter.reason.strip(), letter
        assert letter.attempts == 1, f"retried before refusing: {letter.reason}"
        return f"dead-lettered: {letter.reason}"
    if env is None:
        return ""
    events = record.events.get(env.run_id, [])
    retried = [e for e in events if e.kind == "retried" and e.envelope_id == env.id]
    assert not retried, f"a hostile task was retried as a crash: {retried[0].error}"
    for event in events:
        if event.kind in ENDED or event.kind in (
            "returned",
            "dead_lettered",
        ):  # returned: to its parent task
            if event.kind == "failed":
                assert event.error is not None and event.error.message.strip(), event
            return f"run {event.kind}"
    if env.kind != "task" and f"of run {env.run_id}; dropping {env.kind}" in log.read_text(
        errors="replace"
    ):
        return "dropped: no task waits for it (logged)"
    return ""


async def publish_and_settle(
    bus: Bus, record: Record, echo: tuple[subprocess.Popen[bytes], Path], data: bytes
) -> str:
    proc, log = echo
    fuzz_id = new_id()
    env = decoded(data)
    headers, body = as_message(data)
    await bus.publish_bytes(
        bus.subjects.task_admitted(AGENT),
        body,
        {**headers, "Nats-Msg-Id": fuzz_id, "Fuzz-Id": fuzz_id},
    )
    outcome = ""

    def done() -> bool:
        nonlocal outcome
        outcome = settled(record, fuzz_id, env, log)
        return bool(outcome) or proc.poll() is not None

    await wait_for(done, timeout_s=20, what=f"the hostile message {data[:60]!r} to settle")
    assert proc.poll() is None, f"the agent died ({proc.returncode}) on {data[:200]!r}"
    return outcome


def decoded(data: bytes) -> Envelope | None:
    try:
        return msgspec.msgpack.decode(data, type=Envelope)
    except (msgspec.DecodeError, RecursionError):
        return None


def as_message(data: bytes) -> tuple[dict[str, str], bytes]:
    """The hostile envelope in its wire form (Relay-* headers, JSON body) when it is one;
    otherwise the bytes as a body with no headers, as a client that is not relaybus sends."""
    env = decoded(data)
    if env is None:
        return {}, data
    try:
        headers, body = to_message(env)
    except Exception:
        return {}, data
    if any(c in v for v in headers.values() for c in "\r\n"):
        return {}, data  # not a header NATS can carry
    if any(v != v.strip(" \t") for v in headers.values()):
        # NATS headers drop a value's outer blanks: the agent would get another run id than
        # the one this test follows, so the bytes go as they are
        return {}, data
    return headers, body


def envelope_bytes(env: Envelope) -> bytes:
    return msgspec.msgpack.encode(env)


def signal_env(body: SignalBody, **fields: Any) -> bytes:
    env = new_envelope(
        kind="signal",
        sender="mallory",
        recipient=AGENT,
        payload=msgspec.json.encode(body),
        parent_id=new_id(),
    )
    return envelope_bytes(msgspec.structs.replace(env, **fields))


def task_env(payload: bytes, **fields: Any) -> bytes:
    env = new_envelope(kind="task", sender="mallory", recipient=AGENT, payload=payload)
    return envelope_bytes(msgspec.structs.replace(env, **fields))


GOOD = encode(new_envelope(kind="task", sender="user:t", recipient=AGENT, payload=b"{}"))
hostile_bytes = st.one_of(
    st.binary(max_size=300),
    mutations(GOOD),
    envelopes(recipient=AGENT).map(envelope_bytes).filter(lambda b: len(b) <= MAX_PAYLOAD),
)


@E2E
@given(hostile_bytes)
@example(b"")
@example(b"\xc1 not msgpack")
@example(DEEP_MSGPACK)  # regression: RecursionError escaped the decoder; redelivered forever
@example(b"\x81\xa3zzz" + DEEP_MSGPACK)
@example(HUGE_ARRAY_HEADER)
@example(b"\x80" * (MAX_PAYLOAD + 1))  # over the payload limit
@example(task_env(b"not json"))
@example(task_env(b"[1, 2]"))  # echo takes an object
@example(task_env(DEEP_JSON))  # regression: RecursionError in the input decoder, retried
@example(task_env(b"{}", reply_to="", parent_id="P1"))  # nowhere to send the result
@example(task_env(b"{}", reply_to="a.>", parent_id="P1"))
@example(task_env(b"{}", hop=2**63 - 1, max_hops=1))
@example(task_env(b"{}", deadline=1.0))  # long past
@example(task_env(b"{}", deadline=math.nan))
@example(task_env(b"{}", trail=("echo",) * 20))
@example(task_env(b"{}", created_at=math.inf))
@example(envelope_bytes(new_envelope(kind="result", sender="m", recipient=AGENT, payload=b"x")))
@example(
    envelope_bytes(
        new_envelope(
            kind="error",
            sender="m",
            recipient=AGENT,
            payload=msgspec.json.encode(ChildResult(child="c", ok=False)),
            parent_id="*",
        )
    )
)
@example(signal_env(TimerFired(timer="t1", due=math.inf)))  # regression: nak(delay=inf) raised
@example(signal_env(TimerFired(timer="t2", due=math.nan)))  # JSON: null, refused
@example(signal_env(TimerFired(timer="t3", due=1e300)))  # "not due yet", for ever
@example(signal_env(Signal(name="approval"), parent_id=""))
@example(signal_env(Signal(name="x" * 100), parent_id="a.b"))
async def test_hostile_task_messages_end_on_record_and_the_agent_keeps_working(
    bus: Bus, record: Record, running_echo: tuple[subprocess.Popen[bytes], Path], data: bytes
) -> None:
    outcome = await publish_and_settle(bus, record, running_echo, data)
    assert outcome


async def test_a_burst_of_hostile_messages_loses_no_good_task(
    bus: Bus, record: Record, running_echo: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, log = running_echo
    hostile = [
        make()
        for _ in range(4)
        for make in (
            lambda: b"\xc1" + new_id().encode(),
            lambda: DEEP_MSGPACK,
            lambda: task_env(b"not json"),
            lambda: task_env(DEEP_JSON),
            lambda: signal_env(TimerFired(timer="t", due=math.inf)),
        )
    ]
    # Given good tasks already accepted, interleaved with hostile messages
    good = [asyncio.create_task(good_task(bus, n)) for n in range(1, 11)]
    sent = []
    for data in hostile:
        fuzz_id = new_id()
        headers, body = as_message(data)
        await bus.publish_bytes(
            bus.subjects.task_admitted(AGENT), body, {**headers, "Fuzz-Id": fuzz_id}
        )
        sent.append((fuzz_id, decoded(data)))
    good += [asyncio.create_task(good_task(bus, n)) for n in range(11, 21)]
    # Then every good one completes and every hostile one ends on record
    await asyncio.wait_for(asyncio.gather(*good), 60)
    await wait_for(
        lambda: all(settled(record, fuzz_id, env, log) for fuzz_id, env in sent),
        20,
        "every hostile message to settle",
    )
    assert proc.poll() is None
    # And `relaybus dlq list --json` shows each dead-lettered one with its reason, first attempt
    listed = subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "dlq", "list", "--json", "--limit", "1000"],
        env=child_env(bus.settings),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    )
    rows = json.loads(listed.stdout)
    ours = [record.letters[f] for f, _ in sent if f in record.letters]
    assert len(ours) >= 12  # the undecodable ones, and the timers (JSON made inf a null)
    for letter in ours:
        assert any(r["reason"] == letter.reason and r["attempts"] == 1 for r in rows), letter
    # And control messages nobody should send are ignored without killing the process
    for data in [b"", b"{", DEEP_JSON, b'{"action": "cancel"}', b'{"action": 1, "run_id": []}']:
        await bus.publish_core(f"{bus.subjects.prefix}.control.{new_id()}", data)
    await good_task(bus, 99)
    assert proc.poll() is None
