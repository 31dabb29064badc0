"""A run as a graph for the browser: agents (and the submitting user) as nodes; the tasks one
task created — by submit, call, fan-out or handoff — as edges, each with its timings, attempts,
cost, errors and the delegation chain it carried. Built from `relaybus trace`'s tree."""

from __future__ import annotations

import itertools
from typing import Any

from relaybus.services.runs.state import ENDED

from ..runtree import RunTree, TaskNode

# worst first: an edge or node shows the worst status among its tasks
SEVERITY = ["failed", "dead-lettered", "cancelled", "denied", "stopped", "waiting", "running"]


def _worst(statuses: list[str]) -> str:
    for status in SEVERITY:
        if status in statuses:
            return status
    return statuses[-1] if statuses else "running"


# the error types of a task stopped by a refusal (its chain, a scope, a forged message)
REFUSALS = ("PermissionDenied", "ChainInvalid", "Refused")
UNFINISHED = ("failed", "dead-lettered")


def _refusals(task: TaskNode) -> list[str]:
    return [e for e in task.errors if e.startswith("denied:")]


def _status(task: TaskNode, run_ended: bool = False) -> str:
    """The task's status as the console shows it. A task that completed (or handed off) is
    completed even when a tool call it made was refused — the refusal is a detail. "denied"
    is a task that did not finish because of a refusal. Once the run ended nothing waits: a
    task still suspended then (its run was cancelled, say) is "stopped"."""
    if task.status == "waiting" and run_ended:
        return "stopped"
    if task.status in UNFINISHED and _refusals(task):
        others = [e for e in task.errors if not e.startswith("denied:")]
        if not others or _error_type(others[-1]) in REFUSALS:
            return "denied"
    return task.status


def _error_type(error: str) -> str:
    """`PermissionDenied` of "PermissionDenied: …" or of "attempt 2: PermissionDenied: …"."""
    head, _, rest = error.partition(": ")
    return rest.partition(": ")[0] if head.startswith("attempt ") else head


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def notes(count: int, attempts: int, refused: int) -> list[str]:
    """The extra facts a node or edge states: retries and refused calls."""
    out = []
    if attempts > count:
        out.append(_plural(attempts, "attempt"))
    if refused:
        out.append(f"{refused} refused")
    return out


def _link_text(link: dict[str, Any]) -> str:
    scopes = ", ".join(link["scopes"]) or "no scopes"
    return f"{link['issuer']} → agent:{link['subject']} [{scopes}]"


class _Chains:
    """The delegation link each hop carried, matched by (issuer, subject)."""

    def __init__(self, links: list[dict[str, Any]]) -> None:
        self.links = links

    def link(self, issuer: str, subject: str) -> dict[str, Any] | None:
        for link in self.links:
            if link["subject"] == subject and link["issuer"] in (issuer, f"agent:{issuer}"):
                return link
        return None


def _task_json(task: TaskNode, chain: list[str], run_ended: bool) -> dict[str, Any]:
    out = task.as_json()
    del out["children"]
    out["status"] = _status(task, run_ended)
    out["refusals"] = _refusals(task)
    out["refused"] = len(out["refusals"])
    out["denied"] = out["refused"] > 0  # something it tried was refused
    out["chain"] = chain
    return out


def run_graph(tree: RunTree, run_ended: bool = False) -> dict[str, Any]:
    """`{"nodes": [...], "edges": [...], "tasks": [...]}`; edge ids are stable per run.
    `run_ended`: the run's record says it ended (its events may not: a cancel by an operator
    names no task)."""
    run_ended = run_ended or tree.status in ENDED
    chains = _Chains(tree.chain)
    nodes: dict[str, dict[str, Any]] = {}
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []

    def node(name: str, kind: str, depth: int) -> dict[str, Any]:
        found = nodes.get(name)
        if found is None:
            found = nodes[name] = {
                "id": name,
                "kind": kind,
                "depth": depth,
                "tasks": 0,
                "statuses": [],
                "cost": 0,
                "attempts": 0,
                "denied": False,
                "refused": 0,
                "errors": [],
            }
        return found

    def visit(task: TaskNode, parent: TaskNode | None, chain: list[str], depth: int) -> None:
        source = parent.agent if parent else task.sender or "user:?"
        if parent is None:
            node(source, "user" if source.startswith("user:") else "agent", depth - 1)
        link = chains.link(source, task.agent)
        path = [*chain, _link_text(link)] if link else chain
        row = _task_json(task, path, run_ended)
        rows.append(row)
        target = node(task.agent, "agent", depth)
        target["tasks"] += 1
        target["statuses"].append(row["status"])
        target["cost"] += task.cost
        target["attempts"] += task.attempts
        target["denied"] = target["denied"] or row["denied"]
        target["refused"] += row["refused"]
        target["errors"] += task.errors
        key = (parent.task_id if parent else "", task.agent, task.via)
        group = groups.setdefault(
            key,
            {
                "id": f"e{len(groups)}",
                "from": source,
                "to": task.agent,
                "via": task.via,
                "parent_task": key[0],
                "tasks": [],
            },
        )
        group["tasks"].append(row)
        for child in task.children:
            visit(child, task, path, depth + 1)

    for root in tree.roots:
        visit(root, None, [], 1)
    for found in nodes.values():
        found["status"] = _worst(found.pop("statuses")) if found["tasks"] else "ok"
        found["notes"] = notes(found["tasks"], found["attempts"], found["refused"])
    return {
        "nodes": list(nodes.values()),
        "edges": [_edge(g) for g in groups.values()],
        "tasks": rows,
    }


def _edge(group: dict[str, Any]) -> dict[str, Any]:
    tasks = group["tasks"]
    started = min(t["started"] for t in tasks)
    ends = [t["ended"] for t in tasks if t["ended"]]
    overlap = any(
        later["started"] < (earlier["ended"] or float("inf"))
        for earlier, later in itertools.pairwise(tasks)
    )
    return {
        **group,
        "count": len(tasks),
        "fan_out": len(tasks) > 1 and group["via"] == "call" and overlap,
        "status": _worst([t["status"] for t in tasks]),
        "attempts": sum(t["attempts"] for t in tasks),
        "cost": sum(t["cost"] for t in tasks),
        "started": started,
        "duration_ms": round((max(ends) - started) * 1000, 3) if len(ends) == len(tasks) else None,
        "denied": any(t["denied"] for t in tasks),
        "refused": sum(t["refused"] for t in tasks),
        "notes": notes(
            len(tasks), sum(t["attempts"] for t in tasks), sum(t["refused"] for t in tasks)
        ),
        "chain": tasks[0]["chain"],
    }
