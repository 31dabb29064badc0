"""Least privilege on the wire: the nats-server authorization block, generated from the registry.

Each agent connects as its own NATS user (an nkey, distinct from its delegation key). It may
publish only to the task subjects of agents it may hand off to (and of agents that may call it,
for results), to its own subject (timers), to events, audit, its dead letters and the service
request subjects in its own name, plus the JetStream API calls of its own consumer and buckets.
It may subscribe only to its own inbox and the control subjects. No `allow_responses`.

Service discovery (`$SRV.PING|INFO|STATS`, the NATS micro protocol) is for operators only: an
agent gets no `$SRV` subject, since INFO lists operator-only operations and STATS shows every
tenant's request counts. The services' own users subscribe to `$SRV.>` and reply to inboxes
under their `>` allowances (docs/services-discovery.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nkeys

from relaybus.bus import Bus, Subjects
from relaybus.bus.private import write_private
from relaybus.bus.subjects import check_name
from relaybus.bus.supervisor import CLIENT

from .messages import AgentRecord

# Buckets an agent reads (the registry and revocations, to verify chains) but never writes.
READ_BUCKETS = ("agents", "revoked")
# Buckets an agent opens (their stream info), of which it reads only what the lists here allow.
INFO_BUCKETS = ("agents", "users", "revoked", "journal", "presence")
# Buckets an agent writes, each only under keys that end (journal) or start (presence) with
# its own name.
OWN_KEY_BUCKETS = {"journal": "*.*.{name}", "presence": "{name}.*"}


def _service_ops(modules: tuple[str, ...], fallback: tuple[str, ...]) -> tuple[str, ...]:
    """`AGENT_OPS` of a service's client-facing module: the requests an agent may send."""
    import importlib

    for module in modules:
        try:
            return tuple(importlib.import_module(module).AGENT_OPS)
        except (ImportError, AttributeError):
            continue
    return fallback  # fail closed: no ops for an agent


def nkey_path(home: Path, agent: str) -> Path:
    """Where an agent's NATS key is kept; refuses a name that is not an agent's."""
    return home / "keys" / f"{check_name('agent', agent)}.nk"


def new_nkey_seed() -> bytes:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)


def nkey_public(seed: bytes) -> str:
    return str(nkeys.from_seed(seed).public_key.decode())


def write_nkey(home: Path, agent: str, seed: bytes | None = None) -> str:
    """Store the agent's NATS connection key, a new one unless `seed` (0600 under
    RELAYBUS_HOME/keys); returns its public key."""
    seed = seed or new_nkey_seed()
    write_private(nkey_path(home, agent), seed)
    return nkey_public(seed)


def read_nkey(home: Path, agent: str) -> str | None:
    """The public key of the agent's NATS connection key, if it has one."""
    path = nkey_path(home, agent)
    if not path.exists():
        return None
    return str(nkeys.from_seed(path.read_bytes().strip()).public_key.decode())


def inbox_prefix(agent: str) -> str:
    return f"_INBOX_{agent}"


def agent_permissions(
    subjects: Subjects,
    agent: AgentRecord,
    registry: Sequence[AgentRecord],
    ledger_partitions: int = 1,
) -> dict[str, object]:
    """What one agent's NATS user may do: send tasks, results and timers only under its own
    name, to the agents it may hand off to, that may call it, and itself; write only its own
    journal and presence keys; read the registry; call the services' agent operations. It can
    never write control-plane state (registry, revocations, budgets, audit in another's name,
    other runs' events) nor reach an operator's request subject."""
    p, name = subjects.prefix, agent.name
    tasks, durable = subjects.stream("TASKS"), subjects.durable(name)
    timers, timer_durable = subjects.stream("TIMERS"), subjects.timer_durable(name)
    callers = [a.name for a in registry if name in a.handoff_to]
    publish = sorted({subjects.task_from(t, name) for t in (name, *agent.handoff_to, *callers)})
    publish += [
        subject
        for op in _service_ops(
            ("relaybus.services.ledger.messages", "relaybus.services.ledger.client"), ()
        )
        # the op on the ledger, and on each partition of a partitioned one
        for subject in (
            subjects.service("ledger", op),
            *(
                subjects.service_at("ledger", op, f"p{i}")
                for i in range(ledger_partitions if ledger_partitions > 1 else 0)
            ),
        )
    ]
    publish += [
        subjects.service("memory", op) for op in _service_ops(("relaybus.memory.messages",), ())
    ]
    publish += [
        subjects.events_from(name),
        f"{p}.control.*.{name}",
        f"{p}.audit.*.{name}",
        subjects.dlq(name),
        subjects.service_from("identity", "stamp", name),
        subjects.service("identity", "pubkey"),
        subjects.service("runs", name),  # its runs' records, through the run authority
        "$JS.API.INFO",
        # its own consumers, which the identity service created at registration: reading and
        # acking only — a consumer configuration could name other subjects or a delivery
        # subject anywhere, so an agent never sends one
        f"$JS.API.CONSUMER.INFO.{tasks}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{tasks}.{durable}",
        f"$JS.ACK.{tasks}.{durable}.>",
        subjects.timer(name),
        f"$JS.API.CONSUMER.INFO.{timers}.{timer_durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{timers}.{timer_durable}",
        f"$JS.ACK.{timers}.{timer_durable}.>",
        "$JS.FC.>",
    ]
    for bucket in INFO_BUCKETS:
        publish.append(f"$JS.API.STREAM.INFO.KV_{subjects.bucket(bucket)}")
    for bucket in READ_BUCKETS:
        kv = subjects.bucket(bucket)
        publish += [
            f"$JS.API.DIRECT.GET.KV_{kv}.>",
            f"$JS.API.DIRECT.GET.KV_{kv}",
            f"$JS.API.CONSUMER.CREATE.KV_{kv}",
            f"$JS.API.CONSUMER.CREATE.KV_{kv}.>",
            f"$JS.API.CONSUMER.INFO.KV_{kv}.*",
        ]
    for bucket, pattern in OWN_KEY_BUCKETS.items():
        kv = subjects.bucket(bucket)
        own = pattern.format(name=name)
        publish += [
            f"$KV.{kv}.{own}",
            f"$JS.API.DIRECT.GET.KV_{kv}.$KV.{kv}.{own}",
        ]
    subscribe = [f"{inbox_prefix(name)}.>", f"{p}.control.>"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


CONTROL_BUCKETS = ("agents", "users", "revoked", "runs", "journal", "reviews")
STREAM_ADMIN = (
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
)
IDENTITY_ADMIN = ("agent_add", "user_add", "role_add", "token", "revoke", "user_list")
REGISTRY_BUCKETS = ("agents", "users", "revoked")


def _registry_watch_admin(subjects: Subjects) -> list[str]:
    """Listing or deleting the consumers of the registry's streams: the identity service's and
    every gate's watches live there, and a process that found one could silence it (each copy
    checks the stream and stops answering within seconds; no service needs to try)."""
    out = []
    for bucket in REGISTRY_BUCKETS:
        stream = f"KV_{subjects.bucket(bucket)}"
        out += [
            f"$JS.API.CONSUMER.LIST.{stream}",
            f"$JS.API.CONSUMER.NAMES.{stream}",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
        ]
    return out


def _ingress_permissions(subjects: Subjects) -> dict[str, object]:
    """The ingress admits plain tasks: it reads them, asks identity to authenticate and stamp,
    records the run, and hands the task on. It never administers identity, writes the registry
    or a journal, sends as an agent or sets a timer, or deletes, purges or updates a stream."""
    p = subjects.prefix
    deny = [
        f"$KV.{subjects.bucket(b)}.>" for b in ("agents", "users", "revoked", "journal", "reviews")
    ]
    deny += [f"{p}.timer.>", *STREAM_ADMIN, *_registry_watch_admin(subjects)]
    deny.append(agent_events(subjects))
    for op in IDENTITY_ADMIN:
        deny += [subjects.service("identity", op), f"{subjects.service('identity', op)}.>"]
    return {"publish": {"allow": [">"], "deny": deny}, "subscribe": {"allow": [">"]}}


def service_permissions(subjects: Subjects, service: str) -> dict[str, object] | None:
    """What a service's NATS user may not do (None: everything, for identity, which owns the
    registry and run records): the ledger and memory services never write the registry, run
    records or journals, never send tasks or identity/run requests, and never delete or purge
    a stream."""
    if service == "ingress":
        return _ingress_permissions(subjects)
    service = service.partition("-")[0]  # `ledger-p1`: one partition's writer
    if service not in ("ledger", "memory"):
        return None
    p = subjects.prefix
    deny = [f"$KV.{subjects.bucket(b)}.>" for b in CONTROL_BUCKETS]
    deny += [
        f"{p}.task.>",
        f"{p}.timer.>",
        subjects.service_all("identity"),
        subjects.service_all("runs"),
        *STREAM_ADMIN,
        *_registry_watch_admin(subjects),
        agent_events(subjects),
    ]
    # nor read tasks: a plain task carries its user's token on the way to the ingress
    tasks = subjects.stream("TASKS")
    deny += [
        f"$JS.API.CONSUMER.CREATE.{tasks}",
        f"$JS.API.CONSUMER.CREATE.{tasks}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{tasks}.>",
        f"$JS.API.STREAM.MSG.GET.{tasks}",
        f"$JS.API.DIRECT.GET.{tasks}",
        f"$JS.API.DIRECT.GET.{tasks}.>",
    ]
    return {
        "publish": {"allow": [">"], "deny": deny},
        "subscribe": {"allow": [">"], "deny": [f"{p}.task.>"]},
    }


def agent_events(subjects: Subjects) -> str:
    """The events agents publish (`<prefix>.event.<run>.<kind>.<agent>`): only the agent named
    last may publish one, so a waiter may take a run's line holder's `completed` event as the
    run's outcome (agents/waiting.py); a service's events carry no agent token."""
    return f"{subjects.prefix}.event.*.*.*"


CLIENT_INBOX = "_INBOX_client"  # plain clients connect with this inbox prefix (docs/wire.md)


def client_permissions(subjects: Subjects) -> dict[str, object]:
    """The NATS user for plain clients (docs/wire.md): publish a task on a bare task subject
    (the ingress checks its user's token before anything runs) and follow run events, stored
    ones included; nothing else — no admitted or agent task subjects, no KV, no service
    requests, no stream administration."""
    p = subjects.prefix
    events = subjects.stream("EVENTS")
    return {
        "publish": {
            "allow": [
                f"{p}.task.*",
                "$JS.API.STREAM.NAMES",
                f"$JS.API.STREAM.INFO.{events}",
                f"$JS.API.CONSUMER.CREATE.{events}",
                f"$JS.API.CONSUMER.CREATE.{events}.>",
                f"$JS.API.CONSUMER.DELETE.{events}.>",
                f"$JS.API.CONSUMER.INFO.{events}.>",
                "$JS.FC.>",
            ]
        },
        # its own inbox prefix: under the default `_INBOX.` it could read every other
        # connection's replies (a newly issued token, a task pulled by the ingress)
        "subscribe": {"allow": [f"{CLIENT_INBOX}.>", f"{p}.event.>"]},
    }


def authorization_block(
    subjects: Subjects,
    agents: Sequence[AgentRecord],
    admins: dict[str, str],
    ledger_partitions: int = 1,
) -> str:
    """The `authorization { … }` block: the operator and the services, each its own user and
    password (the ledger and memory services without control-plane writes), and one nkey user
    per registered, unrevoked agent with its least-privilege permissions."""
    full = {"publish": ">", "subscribe": ">"}
    users: list[dict[str, object]] = [
        {
            "user": user,
            "password": password,
            "permissions": client_permissions(subjects)
            if user == CLIENT
            else service_permissions(subjects, user) or full,
        }
        for user, password in sorted(admins.items())
    ]
    for agent in agents:
        if agent.revoked or not agent.nkey:
            continue
        users.append(
            {
                "nkey": agent.nkey,
                "permissions": agent_permissions(subjects, agent, agents, ledger_partitions),
            }
        )
    return "authorization {\n  users = " + json.dumps(users, indent=2) + "\n}\n"


class RegistryAuth:
    """Keeps the embedded server's authorization block in step with the agent registry."""

    def __init__(self, subjects: Subjects, ledger_partitions: int = 1) -> None:
        self.subjects = subjects
        self.ledger_partitions = ledger_partitions
        self._admins: dict[str, str] = {}

    def initial(self, admins: dict[str, str]) -> str:
        self._admins = dict(admins)
        return authorization_block(self.subjects, [], self._admins, self.ledger_partitions)

    def _block(self, agents: Sequence[AgentRecord]) -> str:
        return authorization_block(self.subjects, agents, self._admins, self.ledger_partitions)

    async def follow(self, bus: Bus, write: Callable[[str], None]) -> None:
        from .registry import Registry

        registry = await Registry.open(bus)
        last = ""
        watch = await registry.agents.watch()
        write(last := self._block(await registry.all_agents()))
        async for _key, _value in watch:
            block = self._block(await registry.all_agents())
            if block != last:
                write(last := block)
