"""Streams, consumers and KV buckets declared as data and provisioned idempotently.

`ensure(bus, specs)` creates what is missing, leaves what matches alone, and raises
ProvisioningConflict naming every differing field of what exists with another config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.js import api
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from .client import Bus
from .errors import ProvisioningConflict
from .subjects import Subjects

DAY_S = 86_400.0
log = logging.getLogger("relaybus.streams")
# JetStream answers nothing (or 503) while a cluster elects its meta leader after a start
_NOT_READY = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: str = "limits"  # limits | workqueue | interest
    max_age_s: float = 0.0
    duplicate_window_s: float = 120.0
    deny_delete: bool = False
    deny_purge: bool = False
    max_msgs_per_subject: int = -1
    replicas: int = 1
    allow_direct: bool = True

    def config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=api.RetentionPolicy(self.retention),
            storage=api.StorageType.FILE,
            max_age=self.max_age_s,
            duplicate_window=self.duplicate_window_s,
            deny_delete=self.deny_delete,
            deny_purge=self.deny_purge,
            max_msgs_per_subject=self.max_msgs_per_subject,
            num_replicas=self.replicas,
            allow_direct=self.allow_direct,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float
    max_ack_pending: int = 1000

    def config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            durable_name=self.durable,
            filter_subjects=list(self.filter_subjects),
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            # Unlimited on the server: the consume loop counts attempts itself and dead-letters,
            # so a message whose last attempt crashed is never stranded undelivered.
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
        )


@dataclass(frozen=True)
class BucketSpec:
    bucket: str
    history: int = 1
    ttl_s: float = 0.0
    replicas: int = 1


@dataclass(frozen=True)
class Topology:
    streams: tuple[StreamSpec, ...] = ()
    buckets: tuple[BucketSpec, ...] = ()
    consumers: tuple[ConsumerSpec, ...] = field(default=())


def default_topology(subjects: Subjects, replicas: int = 1) -> Topology:
    """The streams and buckets every relaybus deployment has (DESIGN.md, Names).

    `replicas` comes from RELAYBUS_STREAM_REPLICAS: 3 on a NATS cluster, 1 on one server."""
    p = subjects.prefix
    streams = (
        StreamSpec(
            subjects.stream("TASKS"), (f"{p}.task.>",), retention="workqueue", replicas=replicas
        ),
        StreamSpec(
            subjects.stream("EVENTS"), (f"{p}.event.>",), max_age_s=7 * DAY_S, replicas=replicas
        ),
        StreamSpec(subjects.stream("DLQ"), (f"{p}.dlq.>",), replicas=replicas),
        StreamSpec(
            subjects.stream("TIMERS"), (f"{p}.timer.>",), retention="workqueue", replicas=replicas
        ),
        StreamSpec(
            subjects.stream("LEDGER"),
            (f"{p}.ledger.entry.>",),
            deny_delete=True,
            deny_purge=True,
            replicas=replicas,
        ),
        StreamSpec(
            subjects.stream("AUDIT"),
            (f"{p}.audit.>",),
            deny_delete=True,
            deny_purge=True,
            replicas=replicas,
        ),
    )
    buckets = (
        BucketSpec(subjects.bucket("runs"), history=1, replicas=replicas),
        BucketSpec(subjects.bucket("presence"), history=1, ttl_s=60.0, replicas=replicas),
        BucketSpec(subjects.bucket("journal"), history=1, replicas=replicas),
        BucketSpec(subjects.bucket("agents"), history=1, replicas=replicas),
        BucketSpec(subjects.bucket("users"), history=1, replicas=replicas),
        BucketSpec(subjects.bucket("revoked"), history=1, replicas=replicas),
        BucketSpec(subjects.bucket("ledger_snapshots"), history=1, replicas=replicas),
        BucketSpec(subjects.bucket("payment_events"), history=1, replicas=replicas),
        # human review requests and verdicts (agents/review.py): operator-credentialed writers only
        BucketSpec(subjects.bucket("reviews"), history=1, replicas=replicas),
        # `relaybus a2a serve`'s tasks, so a restart or a second server answers for them
        BucketSpec(subjects.bucket("a2a_tasks"), history=1, ttl_s=30 * DAY_S, replicas=replicas),
        BucketSpec(subjects.bucket("sessions"), history=1, ttl_s=7 * DAY_S, replicas=replicas),
    )
    return Topology(streams=streams, buckets=buckets)


def agent_consumer(subjects: Subjects, agent: str, ack_wait_s: float) -> ConsumerSpec:
    return ConsumerSpec(
        stream=subjects.stream("TASKS"),
        durable=subjects.durable(agent),
        filter_subjects=subjects.task_filters(agent),
        ack_wait_s=ack_wait_s,
    )


def ingress_consumer(subjects: Subjects, ack_wait_s: float) -> ConsumerSpec:
    """The ingress's: plain tasks any NATS client publishes to `<prefix>.task.<agent>`."""
    return ConsumerSpec(
        stream=subjects.stream("TASKS"),
        durable=subjects.ingress_durable(),
        filter_subjects=(subjects.ingress(),),
        ack_wait_s=ack_wait_s,
    )


# Timers one agent may have pending at once; more wait in the stream and fire late.
MAX_PENDING_TIMERS = 10_000


def timer_consumer(subjects: Subjects, agent: str, ack_wait_s: float) -> ConsumerSpec:
    return ConsumerSpec(
        stream=subjects.stream("TIMERS"),
        durable=subjects.timer_durable(agent),
        filter_subjects=(subjects.timer(agent),),
        ack_wait_s=ack_wait_s,
        max_ack_pending=MAX_PENDING_TIMERS,
    )


async def ensure_agent_consumers(bus: Bus, agent: str) -> None:
    """Create an agent's task and timer consumers. Under NATS authentication the identity
    service does it when the agent is registered: an agent that could send a consumer
    configuration could give itself another agent's subjects or a delivery subject anywhere."""
    ack_wait_s = bus.settings.ack_wait_s
    await ensure_consumer_ready(bus, agent_consumer(bus.subjects, agent, ack_wait_s))
    await ensure_consumer_ready(bus, timer_consumer(bus.subjects, agent, ack_wait_s))


def _diff(kind: str, name: str, want: dict[str, object], have: dict[str, object]) -> None:
    differing = [
        f"{key}: has {have.get(key)!r}, spec wants {value!r}"
        for key, value in want.items()
        if have.get(key) != value
    ]
    if differing:
        raise ProvisioningConflict(
            f"{kind} {name} exists with a different config ({'; '.join(differing)}); "
            "relaybus does not replace it: delete it, or use another RELAYBUS_PREFIX"
        )


async def ensure_stream(bus: Bus, spec: StreamSpec) -> bool:
    """Create the stream if missing. Returns True if it was created."""
    want = spec.config()
    try:
        info = await bus.js.stream_info(spec.name)
    except nats.js.errors.NotFoundError:
        await bus.js.add_stream(want)
        return True
    have = info.config
    _diff(
        "stream",
        spec.name,
        {
            "subjects": sorted(spec.subjects),
            "retention": want.retention,
            "max_age": float(spec.max_age_s),
            "deny_delete": spec.deny_delete,
            "deny_purge": spec.deny_purge,
            "num_replicas": spec.replicas,
        },
        {
            "subjects": sorted(have.subjects or []),
            "retention": have.retention,
            "max_age": float(have.max_age or 0.0),
            "deny_delete": bool(have.deny_delete),
            "deny_purge": bool(have.deny_purge),
            "num_replicas": have.num_replicas or 1,
        },
    )
    return False


async def ensure_consumer(bus: Bus, spec: ConsumerSpec) -> bool:
    try:
        info = await bus.js.consumer_info(spec.stream, spec.durable)
    except nats.js.errors.NotFoundError:
        await bus.js.add_consumer(spec.stream, spec.config())
        return True
    have = info.config
    _diff(
        "consumer",
        f"{spec.stream}/{spec.durable}",
        {
            "filter_subjects": sorted(spec.filter_subjects),
            "ack_wait": spec.ack_wait_s,
            "max_deliver": -1,
        },
        {
            "filter_subjects": sorted(have.filter_subjects or [have.filter_subject or ""]),
            "ack_wait": have.ack_wait,
            "max_deliver": have.max_deliver,
        },
    )
    return False


async def ensure_bucket(bus: Bus, spec: BucketSpec) -> bool:
    try:
        info = await bus.js.stream_info(f"KV_{spec.bucket}")
    except nats.js.errors.NotFoundError:
        await bus.js.create_key_value(
            api.KeyValueConfig(
                bucket=spec.bucket,
                history=spec.history,
                ttl=spec.ttl_s or None,
                replicas=spec.replicas,
                # direct gets name the key in the subject, so NATS permissions can confine an
                # agent to its own keys (a STREAM.MSG.GET names it in the body)
                direct=True,
            )
        )
        return True
    have = info.config
    _diff(
        "KV bucket",
        spec.bucket,
        {"history": spec.history, "ttl": float(spec.ttl_s), "replicas": spec.replicas},
        {
            "history": have.max_msgs_per_subject,
            "ttl": float(have.max_age or 0.0),
            "replicas": have.num_replicas or 1,
        },
    )
    return False


NO_PEERS_FOR_PLACEMENT = 10005  # JetStream's err_code: the replicas asked for are not all known


def _not_ready(exc: BaseException) -> bool:
    """JetStream does not answer yet, or a cluster that just started has not met all its peers
    (a replicated stream finds "no suitable peers for placement" for a moment)."""
    if isinstance(exc, _NOT_READY):
        return True
    return (
        isinstance(exc, nats.js.errors.BadRequestError) and exc.err_code == NO_PEERS_FOR_PLACEMENT
    )


def _until_ready(ready_within_s: float) -> AsyncRetrying:
    """Retry while JetStream does not answer (a cluster electing its leaders, a node down),
    for at most `ready_within_s`."""
    return AsyncRetrying(
        retry=retry_if_exception(_not_ready),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        stop=stop_after_delay(ready_within_s),
        before_sleep=lambda rs: log.warning(
            "JetStream not ready yet (%r); retrying", rs.outcome and rs.outcome.exception()
        ),
        reraise=True,
    )


async def ensure(bus: Bus, topology: Topology, ready_within_s: float = 60.0) -> list[str]:
    """Provision everything in `topology`; returns the names that were created.

    Waits (bounded by `ready_within_s`) for JetStream to answer: a cluster that just started
    needs a few seconds to elect its meta leader, and services start beside it."""
    async for attempt in _until_ready(ready_within_s):
        with attempt:
            return await _ensure_once(bus, topology)
    raise ProvisioningConflict("unreachable")  # pragma: no cover


async def ensure_consumer_ready(bus: Bus, spec: ConsumerSpec, ready_within_s: float = 60.0) -> None:
    """`ensure_consumer`, waiting (bounded) while JetStream does not answer: an agent that
    starts while a cluster node is down or electing waits for it instead of exiting."""
    async for attempt in _until_ready(ready_within_s):
        with attempt:
            await ensure_consumer(bus, spec)


async def _ensure_once(bus: Bus, topology: Topology) -> list[str]:
    created: list[str] = []
    for stream in topology.streams:
        if await ensure_stream(bus, stream):
            created.append(stream.name)
    for bucket in topology.buckets:
        if await ensure_bucket(bus, bucket):
            created.append(bucket.bucket)
    for consumer in topology.consumers:
        if await ensure_consumer(bus, consumer):
            created.append(f"{consumer.stream}/{consumer.durable}")
    return created


async def consumer_exists(bus: Bus, spec: ConsumerSpec) -> bool:
    try:
        await bus.js.consumer_info(spec.stream, spec.durable)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def is_stored(bus: Bus, stream: str, subject: str) -> bool | None:
    """Whether `stream` holds a message on `subject` (one direct read); None if it could not
    be told (no permission, no answer)."""
    try:
        await bus.js.get_last_msg(stream, subject, direct=True)
    except nats.js.errors.NotFoundError:
        return False
    except (nats.errors.Error, TimeoutError) as exc:
        log.debug("could not read the last message on %s: %r", subject, exc)
        return None
    return True


async def read_subject(
    bus: Bus, stream: str, subject: str, after: int = 0
) -> list[tuple[int, bytes]]:
    """Every message stored on `subject` after stream sequence `after`, in order, with its sequence."""
    return [(seq, data) for seq, _, data in await read_matching(bus, stream, subject, after)]


async def read_matching(
    bus: Bus, stream: str, subject: str, after: int = 0
) -> list[tuple[int, str, bytes]]:
    """Every message stored on `subject` (wildcards allowed) after stream sequence `after`,
    in order, with its sequence and its own subject."""
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    present = info.state.subjects or {}
    wildcard = "*" in subject.split(".") or subject.endswith(".>")
    if not (present if wildcard else present.get(subject)) or info.state.last_seq <= after:
        return []
    if after:
        sub = await bus.js.subscribe(
            subject,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=after + 1),
        )
    else:
        sub = await bus.js.subscribe(
            subject, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
        )
    out: list[tuple[int, str, bytes]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=bus.settings.request_timeout_s)
            out.append((msg.metadata.sequence.stream, msg.subject, bytes(msg.data)))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()
