"""Where a running `relaybus up` stack is recorded, so commands in other terminals find it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec

from .errors import StackNotRunning
from .private import write_private
from .settings import Settings

STACK_FILE = "stack.json"


class Proc(msgspec.Struct, frozen=True, kw_only=True):
    """A process the stack started: pid plus its kernel start time, so a reused pid is not ours."""

    name: str
    pid: int
    started: int
    metrics_port: int = 0  # its Prometheus endpoint (`up --metrics-port`), 0 for none


class StackRecord(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str
    home: str
    supervisor: Proc
    processes: tuple[Proc, ...] = ()
    client_url: str = ""  # plain clients' least-privilege user (docs/wire.md); "" without auth


def proc_start_time(pid: int) -> int:
    """The process start time in clock ticks since boot (Linux), or 0 when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def describe(name: str, pid: int, metrics_port: int = 0) -> Proc:
    return Proc(name=name, pid=pid, started=proc_start_time(pid), metrics_port=metrics_port)


def is_alive(proc: Proc) -> bool:
    """True if `proc` still runs and is the same process (not a reused pid)."""
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return proc.started == 0 or proc_start_time(proc.pid) == proc.started


def stack_path(settings: Settings) -> Path:
    return settings.home / STACK_FILE


def read_stack(settings: Settings) -> StackRecord | None:
    path = stack_path(settings)
    try:
        record = msgspec.json.decode(path.read_bytes(), type=StackRecord)
    except FileNotFoundError:
        return None
    except msgspec.DecodeError:
        return None
    return record if is_alive(record.supervisor) else None


def write_stack(settings: Settings, record: StackRecord) -> None:
    write_private(stack_path(settings), msgspec.json.encode(record))  # may hold the admin password


def remove_stack(settings: Settings) -> None:
    stack_path(settings).unlink(missing_ok=True)


def public_url(url: str) -> str:
    """`url` (or a comma-separated list) without user:password, for printing or for nkey users."""
    out = []
    for one in url.split(","):
        scheme, sep, rest = one.strip().partition("://")
        out.append(f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else one.strip())
    return ",".join(out)


def resolve_nats_url(settings: Settings) -> str:
    """RELAYBUS_NATS_URL if set, else the URL of the stack running under RELAYBUS_HOME."""
    if settings.nats_url:
        return settings.nats_url
    record = read_stack(settings)
    if record is None:
        raise StackNotRunning(
            f"no relaybus stack runs under {settings.home.resolve()}: start one with "
            "`relaybus up --detach`, or set RELAYBUS_NATS_URL to a NATS server"
        )
    return record.nats_url


def to_json(record: StackRecord) -> str:
    return json.dumps(msgspec.to_builtins(record))
