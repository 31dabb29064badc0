"""The only place subject strings are built, and the check every published subject passes."""

from __future__ import annotations

import re

from .errors import SubjectInvalid

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOKEN_BAD = re.compile(r"[\s*>]")
ADMITTED = "$in"  # the sender token of admitted tasks: not a name an agent can have


def is_name(value: object) -> bool:
    """Whether `value` is a valid agent, user or run name (what `check_name` accepts)."""
    return isinstance(value, str) and bool(_NAME_RE.match(value))


def check_name(kind: str, value: str) -> str:
    """Validate an agent, service or run name used as one subject token."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        noun = "run id" if kind == "run" else f"{kind} name"
        raise SubjectInvalid(
            f"{noun} {value!r} is not allowed: use 1-64 letters, digits, '_' or '-'"
        )
    return value


_SUBJECT_OK = re.compile(r"[^\s*>.]+(?:\.[^\s*>.]+)*")


MAX_SUBJECT = 1024  # nats-server ends a connection whose control line passes 4 KiB: for good


def check_subject(subject: str) -> str:
    """Refuse subjects that NATS would accept but that would be unsafe to publish to, or that
    would end the connection (a subject too long for the server's control line: nats-py then
    closes the client for good, and every request on it fails after)."""
    if len(subject) <= MAX_SUBJECT and _SUBJECT_OK.fullmatch(subject):  # the why on failure
        return subject
    if len(subject) > MAX_SUBJECT:
        raise SubjectInvalid(
            f"subject {subject[:60]!r}… is {len(subject)} characters; at most {MAX_SUBJECT}"
        )
    if not subject:
        raise SubjectInvalid("empty subject")
    for token in subject.split("."):
        if not token:
            raise SubjectInvalid(f"subject {subject!r} has an empty token")
        if _TOKEN_BAD.search(token):
            raise SubjectInvalid(
                f"subject {subject!r} has a wildcard or whitespace in token {token!r}"
            )
    return subject


class Subjects:
    """Subject and stream names for one prefix (`relay` by default)."""

    __slots__ = ("_tasks", "prefix", "stream_prefix")

    def __init__(self, prefix: str = "relay") -> None:
        self.prefix = prefix
        self.stream_prefix = prefix.upper().replace("-", "_")
        self._tasks: dict[str, str] = {}

    def task(self, agent: str) -> str:
        subject = self._tasks.get(agent)
        if subject is None:
            subject = f"{self.prefix}.task.{check_name('agent', agent)}"
            if len(self._tasks) < 4096:
                self._tasks[agent] = subject
        return subject

    def task_from(self, agent: str, sender: str) -> str:
        """Where agent `sender` publishes to `agent`: the sender is the last token, and each
        agent's NATS user may publish only subjects that end in its own name."""
        return f"{self.task(agent)}.{check_name('agent', sender)}"

    def task_admitted(self, agent: str) -> str:
        """Where a run's first task for `agent` goes once admitted (by the ingress, a Client or
        an operator): no agent's NATS user may publish here, so it names no sending agent."""
        return f"{self.task(agent)}.{ADMITTED}"

    def task_filters(self, agent: str) -> tuple[str]:
        """What `agent`'s consumer reads: admitted tasks and tasks from agents. The bare
        `task.<agent>` is the ingress's: a plain NATS client's task, not yet admitted."""
        return (f"{self.task(agent)}.*",)

    def ingress(self) -> str:
        """Plain tasks from any NATS client, `<prefix>.task.<agent>`, for the ingress."""
        return f"{self.prefix}.task.*"

    def source_of(self, subject: str) -> str:
        """The sending agent named by a task or event subject; "" when no agent sent it (a
        user or operator connection, whose subjects end without a sender token)."""
        parts = subject.split(".")
        base = len(self.prefix.split("."))
        if len(parts) == base + 3 and parts[base] == "task":
            return "" if parts[-1] == ADMITTED else parts[-1]
        if len(parts) == base + 4 and parts[base] == "event":
            return parts[-1]
        if len(parts) == base + 2 and parts[base] == "timer":
            return parts[-1]
        if len(parts) == base + 3 and parts[base] == "control":
            return parts[-1]
        return ""

    def timer(self, agent: str) -> str:
        """Where `agent` keeps its pending timers: its own stream and consumer, so a timer
        waiting to fire never takes one of the agent's task slots."""
        return f"{self.prefix}.timer.{check_name('agent', agent)}"

    def tasks_all(self) -> str:
        return f"{self.prefix}.task.>"

    def event(self, run_id: str, kind: str, source: str = "") -> str:
        """A run event; `source` is the publishing agent (events from users, operators and
        services carry none). Agents may publish only events that end in their own name."""
        subject = f"{self.prefix}.event.{check_name('run', run_id)}.{check_name('event', kind)}"
        return f"{subject}.{check_name('agent', source)}" if source else subject

    def events_of(self, run_id: str | None = None) -> str:
        if run_id is None:
            return f"{self.prefix}.event.>"
        return f"{self.prefix}.event.{check_name('run', run_id)}.>"

    def dlq(self, agent: str) -> str:
        return f"{self.prefix}.dlq.{check_name('agent', agent)}"

    def dlq_all(self) -> str:
        return f"{self.prefix}.dlq.>"

    def control(self, run_id: str, source: str = "") -> str:
        """Control messages for a run: from an operator (no sender token), or from agent
        `source` (the only control subjects its NATS user may publish end in its name)."""
        subject = f"{self.prefix}.control.{check_name('run', run_id)}"
        return f"{subject}.{check_name('agent', source)}" if source else subject

    def controls_all(self) -> str:
        return f"{self.prefix}.control.>"

    def service(self, service: str, op: str) -> str:
        return f"{self.prefix}.svc.{check_name('service', service)}.{check_name('op', op)}"

    def service_from(self, service: str, op: str, sender: str) -> str:
        """Operation `op` of `service` asked by agent `sender`, named as the subject's last
        token (NATS permissions let an agent publish only its own), e.g. identity's stamps."""
        return f"{self.service(service, op)}.{check_name('agent', sender)}"

    def service_all(self, service: str) -> str:
        """Every subject of `service`, the one-token operations and those naming a sender."""
        return f"{self.prefix}.svc.{check_name('service', service)}.>"

    def service_at(self, service: str, op: str, partition: str) -> str:
        """Operation `op` of the `partition` of a partitioned service (`op` may be `*`)."""
        return (
            f"{self.prefix}.svc.{check_name('service', service)}."
            f"{'*' if op == '*' else check_name('op', op)}.{check_name('partition', partition)}"
        )

    def service_ops(self, service: str) -> str:
        """What a service's replicas subscribe to: each of its one-token operations."""
        return f"{self.prefix}.svc.{check_name('service', service)}.*"

    def ledger_entry(self, partition: str) -> str:
        """Where the ledger journals one partition's entries (stream LEDGER)."""
        return f"{self.prefix}.ledger.entry.{check_name('partition', partition)}"

    def events_from(self, agent: str) -> str:
        """Every event `agent` may publish (its name last)."""
        return f"{self.prefix}.event.*.*.{check_name('agent', agent)}"

    def audit(self, principal: str) -> str:
        return f"{self.prefix}.audit.{check_name('principal', principal)}"

    def stream(self, suffix: str) -> str:
        return f"{self.stream_prefix}_{suffix}"

    def bucket(self, suffix: str) -> str:
        return f"{self.prefix.replace('-', '_')}_{suffix}"

    def durable(self, agent: str) -> str:
        return f"agent_{check_name('agent', agent)}"

    def ingress_durable(self) -> str:
        return "ingress"  # agents' durables are agent_<name>: no agent can take it

    def timer_durable(self, agent: str) -> str:
        return f"timer_{check_name('agent', agent)}"
