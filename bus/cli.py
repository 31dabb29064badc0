"""The bus's own `relaybus` subcommands: up, down, status, watch, dlq."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from .client import Bus
from .codec import decode_or_refuse
from .errors import RelayError
from .events import DeadLetter, Event, dead_letter_decoder, event_encoder
from .feed import EventFeed
from .kv import Bucket, BucketMissing
from .runtime import EXIT_ERROR, EXIT_OK
from .settings import Settings
from .stack import is_alive, public_url, read_stack
from .subjects import check_name
from .supervisor import serve_stack, start_detached, stop_stack

log = logging.getLogger("relaybus.cli")

# Each command: (args, settings) -> exit code, sync or async.
Command = Callable[[argparse.Namespace, Settings], Any]


def emit(obj: Any, as_json: bool, text: str | None = None) -> None:
    """One object: its JSON with --json, else `text`. Streams (`watch`) call this per event,
    which makes them JSON lines."""
    if as_json:
        print(json.dumps(obj), flush=True)
    else:
        print(text if text is not None else obj, flush=True)


def emit_rows(
    rows: Sequence[Any], as_json: bool, line: Callable[[Any], str], empty: str = ""
) -> None:
    """A list command's output: with --json one JSON array (`[]` when there is nothing),
    else a line per row, or `empty` (to stderr) when there are no rows."""
    if as_json:
        print(json.dumps(list(rows)), flush=True)
        return
    for row in rows:
        print(line(row), flush=True)
    if not rows and empty:
        print(empty, file=sys.stderr, flush=True)


def when(ts: float | None) -> str:
    """Epoch seconds as local time for people ("-" for none)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def iso(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC timestamp for JSON (None for none)."""
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def money(micro: int | float | None, currency: str = "USD") -> str:
    """Micro-units as an amount with its unit: 47 -> "0.000047 USD", 1500000 -> "1.50 USD"."""
    if micro is None:
        return "-"
    whole = f"{int(micro) / 1_000_000:.6f}".rstrip("0")
    decimals = len(whole.partition(".")[2])
    return f"{whole}{'0' * max(0, 2 - decimals)} {currency}"


def register_auth(provider: Callable[[Settings], Any]) -> None:
    """Let an upper layer secure `up` (the identity layer supplies the registry-driven block)."""
    _AUTH.append(provider)


_AUTH: list[Callable[[Settings], Any]] = []


def register(
    sub: Any,
    self_command: Sequence[str],
    services: Callable[[Settings], dict[str, list[str]]],
    run_ends: frozenset[str] = frozenset(),
) -> None:
    """Add the bus subcommands to the top-level parser's subparsers. `run_ends`: the event
    kinds that end a run (the runtime's), after which `watch --run` exits."""

    def up(args: argparse.Namespace, settings: Settings) -> Any:
        if args.detach:
            if sys.stderr.isatty():
                print("starting nats-server and services…", file=sys.stderr, flush=True)
            extra = () if args.metrics_port is None else ("--metrics-port", str(args.metrics_port))
            url = start_detached(settings, self_command, extra)
            emit(
                {"nats_url": url, "home": str(settings.home.resolve())},
                args.json,
                f"relaybus stack is up at {url} (home {settings.home.resolve()}); `relaybus down` stops it",
            )
            return EXIT_OK
        ready_fd = args.ready_fd
        auth = _AUTH[0](settings) if _AUTH else None
        commands = services(settings)
        if args.metrics_port is not None:  # service i serves Prometheus on PORT+i
            commands = {
                name: [*argv, "--metrics-port", str(args.metrics_port + i)]
                for i, (name, argv) in enumerate(commands.items())
            }
        return serve_stack(settings, commands, ready_fd, auth)

    p = sub.add_parser("up", help="start the embedded stack (nats-server and services)")
    p.add_argument("--detach", action="store_true", help="return once the stack is ready")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve each service's Prometheus metrics: the i-th service on PORT+i "
        "(`relaybus status` lists them)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=up)

    def down(args: argparse.Namespace, settings: Settings) -> int:
        stopped = stop_stack(settings)
        emit(
            {"stopped": stopped},
            args.json,
            (
                "relaybus stack stopped; agents started with `relaybus agent run` keep running "
                "and reconnect when it is up again (stop each with Ctrl-C or SIGTERM)"
            )
            if stopped
            else "no relaybus stack was running here",
        )
        return EXIT_OK

    p = sub.add_parser("down", help="stop the stack `up` started under RELAYBUS_HOME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=down)

    p = sub.add_parser("status", help="where the stack runs and what is up")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=status)

    p = sub.add_parser("watch", help="live handoffs and run events")
    p.add_argument("--run", default=None, help="only this run (replays it from the start)")
    p.add_argument("--agent", default=None, help="only events from or to this agent")
    p.add_argument("--limit", type=int, default=0, help="stop after N events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=watch, run_ends=run_ends)

    dlq = sub.add_parser("dlq", help="dead letters").add_subparsers(dest="dlq_cmd", required=True)
    p = dlq.add_parser("list", help="dead letters with reason, attempts and last error")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=dlq_list)
    p = dlq.add_parser("replay", help="put a dead letter back on its subject (keeps run and chain)")
    p.add_argument("id", type=int, help="the dead letter's id from `dlq list`")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=dlq_replay)


async def status(args: argparse.Namespace, settings: Settings) -> int:
    record = read_stack(settings)
    out: dict[str, Any] = {
        "nats_url": public_url(full_url)
        if (full_url := record.nats_url if record else settings.nats_url)
        else None,
        "home": str(settings.home.resolve()),
        "services": {},
        "metrics": {},
        "agents": [],
    }
    if record:
        host = settings.metrics_host
        for proc in record.processes:
            out["services"][proc.name] = "up" if is_alive(proc) else "down"
            if proc.metrics_port:
                out["metrics"][proc.name] = f"http://{host}:{proc.metrics_port}/metrics"
    if out["nats_url"]:
        try:
            async with Bus(
                settings.model_copy(update={"nats_url": full_url}), name="relaybus-status"
            ) as bus:
                out["services"].setdefault("nats", "up")
                out["agents"] = await list_agents(bus)
        except RelayError:
            out["services"]["nats"] = "down"
    if args.json:
        emit(out, True)
    else:
        print(f"home      {out['home']}")
        print(f"nats      {out['nats_url'] or '(no stack running; `relaybus up --detach`)'}")
        for name, state in out["services"].items():
            metrics = out["metrics"].get(name)
            print(f"service   {name:<10} {state}" + (f"  metrics {metrics}" if metrics else ""))
        for agent in out["agents"]:
            print(f"agent     {agent['name']:<10} {agent['replicas']} replica(s)")
    return EXIT_OK if out["nats_url"] else EXIT_ERROR


class AgentBeat(msgspec.Struct, frozen=True, kw_only=True):
    """What a running agent replica writes to the agents bucket, refreshed while alive."""

    name: str
    pid: int
    host: str
    concurrency: int
    started: float
    beat_at: float = 0.0  # when this beat was written
    interval_s: float = 0.0  # how often the replica writes it


def is_live(beat: AgentBeat, now: float) -> bool:
    """A replica counts while its beats keep coming, and (on this host) while its pid runs: a
    killed replica's last beat stays in the bucket until it expires."""
    if beat.interval_s and now - beat.beat_at > 2.5 * beat.interval_s:
        return False
    if not 0 < beat.pid < MAX_PID:  # written by the agent itself: nothing to trust blindly
        return False
    if beat.host == socket.gethostname():
        try:
            os.kill(beat.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
    return True


MAX_PID = 1 << 22  # Linux's pid_max ceiling


async def list_agents(bus: Bus) -> list[dict[str, Any]]:
    try:
        presence = await Bucket.open(bus, bus.subjects.bucket("presence"))
    except BucketMissing:  # no stack provisioned it: no agent either (a silent JetStream raises)
        return []
    agents: dict[str, dict[str, Any]] = {}
    for key in await presence.keys():  # its listing is retried while nats-py says "no keys"
        found = await presence.get(key)
        if found is None or not found[0]:
            continue
        try:
            beat = msgspec.json.decode(found[0], type=AgentBeat)
        except msgspec.DecodeError:
            continue  # not a beat (an agent writes its own): not counted
        if not is_live(beat, time.time()):
            continue
        row = agents.setdefault(beat.name, {"name": beat.name, "replicas": 0, "pids": []})
        row["replicas"] += 1
        row["pids"].append(beat.pid)
    return sorted(agents.values(), key=lambda r: r["name"])


STATUS = {
    "submitted": "queued",
    "started": "running",
    "resumed": "running",
    "step": "ok",
    "llm": "ok",
    "call": "sent",
    "handoff": "sent",
    "returned": "ok",
    "completed": "ok",
    "suspended": "waiting",
    "parked": "waiting",
    "queued": "waiting",
    "degraded": "degraded",
    "signal": "received",
    "retried": "retry",
    "failed": "error",
    "cancelled": "cancelled",
    "dead_lettered": "error",
    "denied": "denied",
    "evaluated": "scored",
}
WATCH_HEADER = (
    f"{'time':<12} {'run':<26} {'from → to':<28} {'kind':<13} {'try':>3} "
    f"{'status':<9} {'latency':>10} {'cost':>8}  detail"
)


def event_status(event: Event) -> str:
    """A one-word outcome for the watch table (an event carrying an error is an error)."""
    if event.error is not None and event.kind not in ("retried", "denied"):
        return "error"
    if event.kind == "returned" and event.detail and event.detail != "completed":
        return event.detail
    return STATUS.get(event.kind, "")


def event_line(event: Event) -> str:
    """One row of `relaybus watch`: time, run, from → to, kind, attempt, status, latency, cost."""
    stamp = (
        time.strftime("%H:%M:%S", time.localtime(event.time))
        + f".{int(event.time * 1000) % 1000:03d}"
    )
    arrow = f"{event.sender or '-'} → {event.recipient or '-'}"
    latency = f"{event.latency_ms:.1f}ms" if event.latency_ms else "-"
    cost = str(event.cost) if event.cost else "-"
    attempt = str(event.attempt) if event.attempt else "-"
    extra = event.detail if event.kind != "returned" else ""
    if event.error is not None:
        extra = f"{extra} {event.error.type}: {event.error.message}".strip()
    if event.score is not None:
        extra = f"{extra} score={event.score:g}"
    return (
        f"{stamp:<12} {event.run_id:<26} {arrow:<28} {event.kind:<13} {attempt:>3} "
        f"{event_status(event):<9} {latency:>10} {cost:>8}  {extra}"
    ).rstrip()


def event_json(event: Event) -> dict[str, Any]:
    # through JSON: `to_builtins` refuses the msgspec.Raw result a completed event carries
    out: dict[str, Any] = msgspec.json.decode(event_encoder.encode(event))
    out.setdefault("from", "")
    out.setdefault("to", "")
    out["status"] = event_status(event)
    return out


async def watch(args: argparse.Namespace, settings: Settings) -> int:
    async with (
        Bus(settings, name="relaybus-watch") as bus,
        EventFeed(bus, args.run, replay=bool(args.run)) as feed,
    ):
        if sys.stderr.isatty() and not args.json:
            print("watching run events (Ctrl-C to stop)…", file=sys.stderr)
        if args.run and not await _run_exists(bus, args.run):
            # (a run can be watched before it is submitted, under an id its caller chose)
            print(
                f"note: no run {args.run} yet; waiting for it (Ctrl-C to stop; "
                "`relaybus runs` lists the recent ones)",
                file=sys.stderr,
                flush=True,
            )
        if not args.json:
            print(WATCH_HEADER, flush=True)
        seen, ended_at = 0, 0.0
        while not args.limit or seen < args.limit:
            # a watched run's end: what follows it (its evaluations) until a second of quiet
            if ended_at and time.monotonic() - ended_at > RUN_END_DRAIN_S:
                break
            event = await feed.next(1.0 if ended_at else 3600)
            if event is None:
                if ended_at:
                    break
                continue
            if args.run and event.run_id == args.run and event.kind in args.run_ends:
                ended_at = ended_at or time.monotonic()
            if args.agent and args.agent not in (event.sender, event.recipient):
                continue
            seen += 1
            emit(event_json(event), args.json, event_line(event))
    return EXIT_OK


RUN_END_DRAIN_S = 5.0


async def _run_exists(bus: Bus, run_id: str) -> bool:
    check_name("run", run_id)
    try:
        runs = await Bucket.open(bus, bus.subjects.bucket("runs"))
    except RelayError:  # no stack provisioned its buckets yet: no run either
        return False
    return await runs.get(run_id) is not None


async def read_dead_letters(bus: Bus, limit: int) -> list[tuple[int, DeadLetter]]:
    stream = bus.subjects.stream("DLQ")
    try:
        info = await bus.js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return []  # no stack has provisioned the streams yet: nothing was dead-lettered
    out: list[tuple[int, DeadLetter]] = []
    if not info.state.messages:
        return out
    sub = await bus.js.subscribe(
        bus.subjects.dlq_all(), ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
    )
    try:
        while len(out) < limit:
            msg = await sub.next_msg(timeout=bus.settings.request_timeout_s)
            try:
                out.append((msg.metadata.sequence.stream, _dead_letter(msg.data)))
            except RelayError as exc:  # anyone allowed to publish there can store any bytes
                log.warning("skipping DLQ record %d: it %s", msg.metadata.sequence.stream, exc)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


def dead_letter_row(seq: int, letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as `dlq list --json` prints it."""
    return {
        "id": seq,
        "agent": letter.agent,
        "run_id": letter.run_id,
        "envelope_id": letter.envelope_id,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "time": letter.time,
        "last_error": msgspec.to_builtins(letter.last_error) if letter.last_error else None,
    }


async def dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-dlq") as bus:
        letters = await read_dead_letters(bus, args.limit)
    rows = [dead_letter_row(seq, letter) for seq, letter in letters]
    emit_rows(
        rows,
        args.json,
        lambda row: (
            f"{row['id']:>6} {row['agent']:<12} {row['run_id'] or '-':<26} "
            f"attempts={row['attempts']} {row['reason']}"
        ),
        "no dead letters",
    )
    return EXIT_OK


async def read_dead_letter(bus: Bus, seq: int) -> DeadLetter:
    """One dead letter by its id (its sequence in the DLQ stream)."""
    return (await read_dead_letter_at(bus, seq))[0]


async def read_dead_letter_at(bus: Bus, seq: int) -> tuple[DeadLetter, str]:
    """One dead letter by its id, and the DLQ subject it was stored on."""
    if not 1 <= seq < 2**63:  # a stream sequence; the server answers anything else with a 400
        raise RelayError(f"no dead letter with id {seq}; `relaybus dlq list` shows them")
    try:
        raw = await bus.js.get_msg(bus.subjects.stream("DLQ"), seq)
    except nats.js.errors.NotFoundError:
        raise RelayError(f"no dead letter with id {seq}; `relaybus dlq list` shows them") from None
    try:
        return _dead_letter(raw.data or b""), str(raw.subject or "")
    except RelayError as exc:
        raise RelayError(f"dead letter {seq} {exc}") from None


def _dead_letter(data: bytes) -> DeadLetter:
    """A DLQ record decoded; RelayError ("is not …") for bytes that are not a dead letter."""
    return decode_or_refuse(
        dead_letter_decoder, data, RelayError, "is not a relaybus dead-letter record"
    )


async def replay_dead_letter(bus: Bus, seq: int) -> dict[str, Any]:
    """Put dead letter `seq` back on its subject (run, trace, budget and chain kept), then
    remove it from the DLQ; returns what `dlq replay --json` prints."""
    letter, stored_on = await read_dead_letter_at(bus, seq)
    # Only the consume loop of agent A may write on A's DLQ subject (its NATS permissions), and
    # it writes only messages it consumed: from A's task subjects, sender token kept.
    if stored_on != bus.subjects.dlq(letter.agent):
        raise RelayError(
            f"dead letter {seq} names agent {letter.agent!r} but was written on {stored_on!r}; "
            "a letter is replayed only to the agent whose consume loop wrote it"
        )
    own = bus.subjects.task(letter.agent)
    if (
        letter.subject != own
        and letter.subject != bus.subjects.timer(letter.agent)
        and not (
            letter.subject.startswith(own + ".") and letter.subject.count(".") == own.count(".") + 1
        )
    ):  # a forged letter could aim anywhere
        raise RelayError(
            f"dead letter {seq} is for {letter.subject!r}, not {letter.agent}'s task subject; "
            "it is not replayed"
        )
    headers = {
        k: v
        for k, v in letter.headers.items()
        if not k.startswith("Nats-") and k not in ("Relay-Replay", "Relay-Source")
    }
    headers["Nats-Msg-Id"] = f"{letter.envelope_id or 'raw'}:replay:{seq}"
    headers["Relay-Replay"] = "1"
    # back on the agent's admitted subject (only operators and the ingress publish there), the
    # original sender named in a header the consume loop trusts only on such subjects
    admitted = bus.subjects.task_admitted(letter.agent)
    sender = letter.subject[len(own) + 1 :] if letter.subject.startswith(own + ".") else ""
    if sender and letter.subject != admitted:
        headers["Relay-Source"] = sender
    target = admitted if letter.subject != bus.subjects.timer(letter.agent) else letter.subject
    if target != admitted:
        headers["Relay-Source"] = letter.agent
    sequence = await bus.publish_bytes(target, letter.data, headers)
    await bus.js.delete_msg(bus.subjects.stream("DLQ"), seq)
    return {"id": seq, "subject": target, "run_id": letter.run_id, "sequence": sequence}


async def dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-dlq") as bus:
        row = await replay_dead_letter(bus, args.id)
    emit(
        row,
        args.json,
        f"replayed dead letter {args.id} to {row['subject']} (run {row['run_id'] or '-'})",
    )
    return EXIT_OK
