"""What the console calls a task and a redelivery, where it is computed (no stack needed):
graph.py's statuses and notes, labels.py's reading of a `resumed` event, figures.py's run row."""

from __future__ import annotations

import itertools

from relaybus.agents import runtree
from relaybus.agents.console.figures import figures, run_row
from relaybus.agents.console.graph import run_graph
from relaybus.agents.console.labels import TAKEOVER, Attempts, event_rows
from relaybus.bus import ErrorInfo, Event
from relaybus.services.runs.state import RunRecord, Waiter

RUN = "01RUNRUNRUNRUNRUNRUNRUNRUN"
_clock = itertools.count(1)


def ev(kind: str, task: str = "t1", **kw: object) -> Event:
    fields: dict[str, object] = {
        "sender": "user:ann",
        "recipient": "worker",
        "envelope_id": task,
        "time": 1000.0 + next(_clock),
    }
    fields.update(kw)
    return Event(run_id=RUN, kind=kind, **fields)  # type: ignore[arg-type]


def boom(kind: str = "RuntimeError", message: str = "the upstream is down") -> ErrorInfo:
    return ErrorInfo(type=kind, message=message)


def details(events: list[Event]) -> list[str]:
    return [row["detail"] for row in event_rows(events) if row["kind"] == "resumed"]


def test_a_redelivery_after_a_recorded_failure_is_a_retry() -> None:
    events = [
        ev("started", attempt=1),
        ev("retried", attempt=1, error=boom()),
        ev("resumed", attempt=2, detail=TAKEOVER),
        ev("completed"),
    ]
    assert details(events) == ["retried after attempt 1 failed: RuntimeError (attempt 2)"]


def test_a_redelivery_after_an_attempt_that_recorded_nothing_is_a_takeover() -> None:
    events = [
        ev("started", attempt=1),
        ev("step", detail="tool lookup"),  # then its worker died: no failure recorded
        ev("resumed", attempt=2, detail=TAKEOVER),
        ev("retried", attempt=2, error=boom()),
        ev("resumed", attempt=3, detail=TAKEOVER),
    ]
    first, second = details(events)
    assert first.startswith(TAKEOVER) and "stopped answering" in first
    assert second == "retried after attempt 2 failed: RuntimeError (attempt 3)"


def test_other_redeliveries_are_named_for_what_came_before_and_other_details_stay() -> None:
    attempts = Attempts()
    # a feed that began after the task's earlier events: it does not claim a crash
    assert attempts.detail(ev("resumed", "t9", attempt=2, detail=TAKEOVER)) == (
        "delivered again (attempt 2)"
    )
    assert attempts.detail(ev("parked", "t2")) == ""
    assert attempts.detail(ev("resumed", "t2", attempt=1, detail=TAKEOVER)).startswith(
        "resumed after a budget park"
    )
    assert attempts.detail(ev("dead_lettered", "t3", detail="3 attempts")) == "3 attempts"
    assert "dead-letter queue" in attempts.detail(ev("resumed", "t3", detail=TAKEOVER))
    # the worker's other resumptions keep their own words
    assert attempts.detail(ev("resumed", "t4", detail="result from c_work")) == (
        "result from c_work"
    )


def tree_of(events: list[Event]) -> runtree.RunTree:
    return runtree.build(RUN, [ev("submitted", "", time=1000.0), *events])


def test_a_task_that_completed_despite_a_refused_call_is_completed_the_refusal_noted() -> None:
    tree = tree_of(
        [
            ev("started", attempt=1),
            ev("step", detail="tool score", cost=500),
            ev("denied", detail="send_note: intel@rival.example is outside team.example"),
            ev("completed", cost=500),
        ]
    )
    graph = run_graph(tree)
    (task,) = graph["tasks"]
    assert task["status"] == "completed"
    assert task["refused"] == 1 and task["refusals"][0].startswith("denied: send_note")
    worker = next(n for n in graph["nodes"] if n["id"] == "worker")
    assert worker["status"] == "completed" and worker["notes"] == ["1 refused"]
    (edge,) = graph["edges"]
    assert edge["status"] == "completed" and edge["refused"] == 1
    assert edge["notes"] == ["1 refused"]


def test_a_task_stopped_by_a_refusal_is_denied_and_one_failing_otherwise_failed() -> None:
    refused = tree_of(
        [
            ev("started", attempt=1),
            ev("denied", detail="send_note: outside the team"),
            ev("failed", error=boom("PermissionDenied", "send_note (notes/send) denied")),
        ]
    )
    assert run_graph(refused)["tasks"][0]["status"] == "denied"
    other = tree_of(
        [
            ev("started", attempt=1),
            ev("denied", detail="send_note: outside the team"),
            ev("failed", error=boom("ValueError", "bad input")),
        ]
    )
    assert run_graph(other)["tasks"][0]["status"] == "failed"


def test_retries_are_noted_on_the_edge_and_node_not_as_a_status() -> None:
    tree = tree_of(
        [
            ev("started", attempt=1),
            ev("retried", attempt=1, error=boom()),
            ev("resumed", attempt=2, detail=TAKEOVER),
            ev("completed"),
        ]
    )
    graph = run_graph(tree)
    assert graph["tasks"][0]["status"] == "completed" and graph["tasks"][0]["attempts"] == 2
    assert graph["edges"][0]["notes"] == ["2 attempts"]


def test_once_the_run_ended_nothing_in_its_graph_waits() -> None:
    events = [ev("started", attempt=1), ev("suspended")]
    assert run_graph(tree_of(events))["tasks"][0]["status"] == "waiting"
    # an operator's cancel names no task: the record says the run ended
    graph = run_graph(tree_of(events), run_ended=True)
    assert graph["tasks"][0]["status"] == "stopped"
    assert [e["status"] for e in graph["edges"]] == ["stopped"]
    assert next(n for n in graph["nodes"] if n["id"] == "worker")["status"] == "stopped"


def test_the_run_row_takes_its_numbers_from_the_tree_and_waits_for_nothing_once_ended() -> None:
    tree = tree_of(
        [
            ev("started", attempt=1),
            ev("step", detail="tool lookup", cost=1_500),
            ev("llm", detail="scripted", cost=700, input_tokens=10, output_tokens=20),
            ev("suspended"),
        ]
    )
    record = RunRecord(
        run_id=RUN,
        agent="worker",
        status="running",
        submitted_by="user:ann",
        started=1000.0,
        waits={"approval": Waiter(agent="worker", task_id="t1")},
    )
    numbers = figures(record, tree)
    assert (numbers["steps"], numbers["cost"], numbers["cost_check"]) == (
        2,
        2_200,
        "no ledger answered",
    )
    tree.ledger_cost = 2_200
    row = run_row(record, RUN, figures(record, tree))
    assert (row["steps"], row["cost"], row["waiting_for"]) == (2, 2_200, ["approval"])
    assert (row["input_tokens"], row["output_tokens"], row["attempts"]) == (10, 20, 1)
    record.status, record.ended = "completed", 1010.0
    ended = run_row(record, RUN, figures(record, tree))
    assert ended["waiting_for"] == [] and ended["duration_s"] == 10.0
    # a run whose events are gone keeps what its record says
    record.steps, record.cost = 7, 9_000
    empty = runtree.RunTree(run_id=RUN)
    assert (figures(record, empty)["steps"], figures(record, empty)["cost"]) == (7, 9_000)
