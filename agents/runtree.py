"""A run's tree rebuilt from its events (no tracing backend needed): which agent ran which
task, its steps, tool and LLM calls, timings, attempts, tokens, cost, errors, evaluations.
`relaybus trace RUN` prints it and checks its cost against the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relaybus.bus.events import Event

ENDED = {"returned", "completed", "failed", "cancelled", "dead_lettered"}


@dataclass
class Call:
    """One tool call, step or LLM call inside a task."""

    kind: str  # tool | step | llm
    name: str
    time: float
    latency_ms: float
    cost: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""


@dataclass
class TaskNode:
    task_id: str
    agent: str
    sender: str
    parent_id: str = ""
    via: str = ""  # how it was created: call | handoff | submit
    status: str = "running"
    attempts: int = 1
    started: float = 0.0
    ended: float = 0.0
    queued_ms: float = 0.0
    errors: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    children: list[TaskNode] = field(default_factory=list)

    @property
    def cost(self) -> int:
        return sum(c.cost for c in self.calls)

    def as_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "agent": self.agent,
            "from": self.sender,
            "via": self.via,
            "status": self.status,
            "attempts": self.attempts,
            "started": self.started,
            "ended": self.ended or None,
            "duration_ms": round((self.ended - self.started) * 1000, 3) if self.ended else None,
            "queued_ms": self.queued_ms,
            "cost": self.cost,
            "errors": self.errors,
            "calls": [vars(c) for c in self.calls],
            "evaluations": self.evaluations,
            "children": [c.as_json() for c in self.children],
        }


@dataclass
class RunTree:
    run_id: str
    status: str = "running"
    started: float = 0.0
    ended: float = 0.0
    ledger_cost: int | None = None  # the source of truth, when the ledger answered
    final_cost: int = 0  # what the run's final event reported (read from the ledger then)
    roots: list[TaskNode] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    denials: list[str] = field(default_factory=list)
    chain: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)  # human verdicts (agents/review.py)

    def tasks(self) -> list[TaskNode]:
        out, todo = [], list(self.roots)
        while todo:
            node = todo.pop(0)
            out.append(node)
            todo[:0] = node.children
        return out

    @property
    def event_cost(self) -> int:
        return sum(t.cost for t in self.tasks())

    @property
    def tokens(self) -> tuple[int, int]:
        calls = [c for t in self.tasks() for c in t.calls]
        return sum(c.input_tokens for c in calls), sum(c.output_tokens for c in calls)

    @property
    def cost(self) -> int:
        """The run's cost: the ledger's figure when known, else what the events add up to."""
        return self.ledger_cost if self.ledger_cost is not None else self.event_cost

    def cost_check(self) -> str:
        if self.ledger_cost is None:
            return "no ledger answered"
        if self.ledger_cost == self.event_cost:
            return "matches the ledger"
        return (
            f"events add up to {self.event_cost}, the ledger captured {self.ledger_cost}: "
            "the ledger is the source of truth (events of a crashed process can be lost)"
        )

    def as_json(self) -> dict[str, Any]:
        tokens_in, tokens_out = self.tokens
        return {
            "run_id": self.run_id,
            "status": self.status,
            "started": self.started,
            "ended": self.ended or None,
            "duration_ms": round((self.ended - self.started) * 1000, 3) if self.ended else None,
            "cost": self.cost,
            "ledger_cost": self.ledger_cost,
            "reviews": self.reviews,
            "event_cost": self.event_cost,
            "cost_check": self.cost_check(),
            "steps": sum(len(t.calls) for t in self.tasks()),
            "attempts": sum(t.attempts for t in self.tasks()),
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "denials": self.denials,
            "dead_letters": self.dead_letters,
            "chain": self.chain,
            "tasks": [r.as_json() for r in self.roots],
        }


def build(run_id: str, events: list[Event]) -> RunTree:
    """Fold a run's events, in time order, into its tree."""
    tree = RunTree(run_id=run_id)
    nodes: dict[str, TaskNode] = {}
    created: dict[str, tuple[str, str]] = {}  # child task -> (creating task, call | handoff)
    from_ends: set[str] = set()  # tasks known only from their `returned`: sent by their creator

    def node(event: Event, agent: str = "", sender: str = "") -> TaskNode:
        found = nodes.get(event.envelope_id)
        if found is None:
            found = nodes[event.envelope_id] = TaskNode(
                task_id=event.envelope_id,
                agent=agent or event.recipient,
                sender=sender or event.sender,
                parent_id=event.parent_id,
                started=event.time,
            )
        return found

    for event in sorted(events, key=lambda e: e.time):
        kind = event.kind
        if kind == "submitted":
            tree.started = tree.started or event.time
            continue
        if not event.envelope_id:
            continue
        if kind in ("started", "resumed"):
            task = node(event)
            task.attempts = max(task.attempts, event.attempt or 1)
            if kind == "started":
                task.queued_ms = event.latency_ms
            task.status = "running"
        elif kind == "step":
            task = node(event)
            call_kind, _, name = event.detail.partition(" ")
            task.calls.append(
                Call(
                    kind=call_kind,
                    name=name,
                    time=event.time,
                    latency_ms=event.latency_ms,
                    cost=event.cost,
                    error=f"{event.error.type}: {event.error.message}" if event.error else "",
                )
            )
        elif kind == "llm":
            task = node(event)
            task.calls.append(
                Call(
                    kind="llm",
                    name=event.detail,
                    time=event.time,
                    latency_ms=event.latency_ms,
                    cost=event.cost,
                    input_tokens=event.input_tokens,
                    output_tokens=event.output_tokens,
                    error=f"{event.error.type}: {event.error.message}" if event.error else "",
                )
            )
        elif kind in ("call", "handoff"):
            created[event.child_id] = (event.envelope_id, kind)
            if kind == "handoff":
                task = node(event, event.sender)
                task.status, task.ended = "handed off", event.time
        elif kind == "retried":
            task = node(event)
            task.attempts = max(task.attempts, event.attempt + 1)
            if event.error:
                task.errors.append(
                    f"attempt {event.attempt}: {event.error.type}: {event.error.message}"
                )
        elif kind in ENDED:
            quick = event.envelope_id not in nodes and event.attempt > 0
            if kind == "returned":  # a child's end: from the child, to the agent it answers
                if quick:
                    from_ends.add(event.envelope_id)
                task = node(event, event.sender, event.recipient)
            else:
                task = node(event, event.recipient)
            if quick:  # it ended before its `started` went out: the end says when it began
                task.started = event.time - event.latency_ms / 1000
            if event.attempt:
                task.attempts = max(task.attempts, event.attempt)
            if event.queued_ms:
                task.queued_ms = event.queued_ms
            task.status = event.detail if kind == "returned" else kind
            if kind == "dead_lettered":
                task.status = "dead-lettered"
                tree.dead_letters.append({"task_id": event.envelope_id, "reason": event.detail})
            task.ended = event.time
            if event.error and kind != "retried":
                task.errors.append(f"{event.error.type}: {event.error.message}")
            if kind in ("completed", "failed", "cancelled"):
                tree.status, tree.ended, tree.final_cost = kind, event.time, event.cost
        elif kind == "denied":
            tree.denials.append(event.detail)
            node(event).errors.append(f"denied: {event.detail}")
        elif kind == "evaluated":
            node(event).evaluations.append({"evaluator": event.detail, "score": event.score})
        elif kind in ("suspended", "parked"):
            node(event).status = "waiting"
    for task_id, task in nodes.items():
        parent = created.get(task_id)
        if parent is not None and parent[0] in nodes:
            task.via = parent[1]
            if task_id in from_ends:  # (a handoff's answer goes to the caller, not the sender)
                task.sender = nodes[parent[0]].agent
            nodes[parent[0]].children.append(task)
        else:
            task.via = "submit"
            tree.roots.append(task)
    for task in nodes.values():
        task.children.sort(key=lambda t: t.started)
    tree.roots.sort(key=lambda t: t.started)
    if not tree.started and tree.roots:
        tree.started = tree.roots[0].started
    return tree


def render(tree: RunTree) -> list[str]:
    """The tree as text lines, for `relaybus trace`."""
    duration = f"{(tree.ended - tree.started):.2f}s" if tree.ended else "running"
    tokens_in, tokens_out = tree.tokens
    lines = [
        f"run {tree.run_id}  {tree.status}  {duration}  cost {tree.cost} ({tree.cost_check()})"
        + (f"  tokens {tokens_in} in / {tokens_out} out" if tokens_in or tokens_out else "")
    ]
    for link in tree.chain:
        lines.append(
            f"  chain  {link['issuer']} → agent:{link['subject']}  [{', '.join(link['scopes'])}]"
        )
    for review in tree.reviews:
        lines.append(
            f"  ✓ human review {review['reviewer']}: {review['verdict']} {review['score']:.2f}"
            + (f"  {review['comment']}" if review["comment"] else "")
        )

    def walk(task: TaskNode, depth: int) -> None:
        pad = "  " * depth
        took = f"{(task.ended - task.started) * 1000:.1f} ms" if task.ended else "…"
        tries = f"  attempts {task.attempts}" if task.attempts > 1 else ""
        lines.append(
            f"{pad}└─ {task.agent} [{task.via}]  {task.status}  {took}  "
            f"queued {task.queued_ms:.1f} ms  cost {task.cost}{tries}"
        )
        items: list[tuple[float, str, Any]] = [(c.time, "call", c) for c in task.calls]
        items += [(c.started, "task", c) for c in task.children]
        for _, what, item in sorted(items, key=lambda x: x[0]):
            if what == "task":
                walk(item, depth + 1)
                continue
            extra = f"  cost {item.cost}" if item.cost else ""
            if item.input_tokens or item.output_tokens:
                extra += f"  tokens {item.input_tokens}/{item.output_tokens}"
            if item.error:
                extra += f"  ERROR {item.error}"
            lines.append(f"{pad}   · {item.kind} {item.name}  {item.latency_ms:.1f} ms{extra}")
        for error in task.errors:
            lines.append(f"{pad}   ! {error}")
        for ev in task.evaluations:
            lines.append(f"{pad}   ✓ eval {ev['evaluator']}: {ev['score']}")

    for root in tree.roots:
        walk(root, 1)
    for letter in tree.dead_letters:
        lines.append(f"  dead letter  task {letter['task_id']}: {letter['reason']}")
    return lines
