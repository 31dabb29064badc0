"""`relaybus trace RUN` and `relaybus eval`: what a run did and how well, from the events stream,
the journal and the ledger (no tracing backend needed)."""

from __future__ import annotations

import argparse
import re
import statistics
import time
from typing import Any

import msgspec

from relaybus.bus import Bus, RelayError, Settings, decode
from relaybus.bus import cli as bus_cli
from relaybus.bus.feed import EventFeed, from_the_run
from relaybus.bus.kv import Bucket
from relaybus.bus.runtime import EXIT_OK
from relaybus.services.identity.chain import decode_body, link_id
from relaybus.services.ledger.client import LedgerClient

from . import runtree
from .journal import Journal

LEDGER_TIMEOUT_S = 2.0


async def chain_of(bus: Bus, run_id: str) -> list[dict[str, Any]]:
    """Every delegation link of a run, decoded, root first (read from the run's journals)."""
    bucket = await Bucket.open(bus, bus.subjects.bucket("journal"))
    links: dict[str, dict[str, Any]] = {}
    for key in await bucket.keys():
        if not key.startswith(run_id + "."):
            continue
        found = await bucket.get(key)
        if found is None:
            continue
        env = decode(msgspec.msgpack.decode(found[0], type=Journal).task)
        for index, link in enumerate(env.chain):
            body = decode_body(link.payload)
            links.setdefault(
                link_id(link.payload),
                {
                    "id": link_id(link.payload),
                    "depth_in_chain": index,
                    "issuer": body.issuer,
                    "subject": body.subject,
                    "principal": body.principal,
                    "scopes": [str(s) for s in body.scopes],
                    "nbf": body.nbf,
                    "exp": body.exp,
                    "redelegations_left": body.depth,
                },
            )
    return sorted(links.values(), key=lambda r: (r["depth_in_chain"], r["subject"]))


async def ledger_run_cost(bus: Bus, run_id: str) -> int | None:
    """What the ledger captured for the run, or None when no ledger answers."""
    try:
        rows = await LedgerClient(bus).query("levels", level=f"run:{run_id}")
    except RelayError:
        return None
    return sum(int(row["spent"]) for row in rows if row["level"] == f"run:{run_id}")


async def load_tree(bus: Bus, run_id: str) -> runtree.RunTree:
    async with EventFeed(bus, run_id, replay=True) as feed:
        sourced = await feed.stored_sourced()
    entry = next((e.recipient for e, src in sourced if e.kind == "submitted" and not src), "")
    events = from_the_run(sourced, entry) if entry else [e for e, _ in sourced]
    if not events:
        raise RelayError(f"no events for run {run_id}; `relaybus runs` lists the recent ones")
    tree = runtree.build(run_id, events)
    tree.chain = await chain_of(bus, run_id)
    tree.ledger_cost = await ledger_run_cost(bus, run_id)
    tree.reviews = await human_verdicts(bus, run_id)
    return tree


async def human_verdicts(bus: Bus, run_id: str) -> list[dict[str, Any]]:
    """The run's human review verdicts ([] where the stack has no reviews bucket yet)."""
    from .review import Reviews

    try:
        verdicts = await Reviews(bus).verdicts()
    except RelayError:
        return []
    return [msgspec.to_builtins(v) for v in verdicts if v.run_id == run_id]


async def trace_run(args: argparse.Namespace, settings: Settings) -> int:
    quick = settings.model_copy(update={"request_timeout_s": LEDGER_TIMEOUT_S})
    async with Bus(quick, name="relaybus-trace") as bus:
        tree = await load_tree(bus, args.run_id)
    if args.json:
        bus_cli.emit(tree.as_json(), True)
    else:
        print("\n".join(runtree.render(tree)))
    return EXIT_OK


_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str) -> float:
    """`30m`, `1h`, `2d` → an epoch time that long ago."""
    match = _SINCE.match(text.strip())
    if not match:
        raise RelayError(f"--since {text!r} is not a duration like 30m, 1h or 2d")
    seconds = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    return time.time() - seconds


async def eval_report(args: argparse.Namespace, settings: Settings) -> int:
    if (args.run_id is None) == (args.since is None):
        raise RelayError("give a run id or --since DURATION (e.g. `relaybus eval --since 1h`)")
    since = parse_since(args.since) if args.since else None
    async with (
        Bus(settings, name="relaybus-eval") as bus,
        EventFeed(bus, args.run_id, kind="evaluated", replay=True, since=since) as feed,
    ):
        events = await feed.stored()
    rows: list[dict[str, Any]] = [
        {
            "run_id": e.run_id,
            "agent": e.recipient,
            "task_id": e.envelope_id,
            "evaluator": e.detail,
            "score": e.score,
            **_verdict(e),
            "time": e.time,
        }
        for e in events
    ]
    from .review import DISAGREE_AT, HUMAN, Reviews

    rows = [r for r in rows if r["evaluator"] != HUMAN]  # a name only people's verdicts carry
    async with Bus(settings, name="relaybus-eval") as bus:  # human verdicts beside the scores
        verdicts = [
            v
            for v in await Reviews(bus).verdicts(args.run_id)
            if args.run_id or since is None or v.time >= since
        ]
        automated: dict[str, list[float]] = {}
        for row in rows:
            if row["score"] is not None:
                automated.setdefault(row["run_id"], []).append(row["score"])
        for run_id in {v.run_id for v in verdicts} - set(automated):  # scored before --since
            async with EventFeed(bus, run_id, kind="evaluated", replay=True) as feed:
                scores = [e.score for e in await feed.stored() if e.detail != HUMAN]
            automated[run_id] = [s for s in scores if s is not None]
    humans: dict[str, list[float]] = {}
    for v in verdicts:
        humans.setdefault(v.run_id, []).append(v.score)
    for v in verdicts:
        auto, human = automated.get(v.run_id, []), humans[v.run_id]
        rows.append(
            {
                "run_id": v.run_id,
                "agent": "",
                "task_id": "",
                "evaluator": HUMAN,
                "score": v.score,
                "label": v.verdict + (f" {v.label}" if v.label else ""),
                "explanation": f"{v.reviewer}: {v.comment}".rstrip(": "),
                "time": v.time,
                # the mean human score against the mean automated one (as the console shows)
                "disagrees": bool(auto)
                and abs(sum(human) / len(human) - sum(auto) / len(auto)) >= DISAGREE_AT,
            }
        )
    by_evaluator: dict[str, list[float]] = {}
    for row in rows:
        if row["score"] is not None:
            by_evaluator.setdefault(row["evaluator"], []).append(row["score"])
    summary = {
        name: {
            "count": len(scores),
            "mean": round(statistics.fmean(scores), 4),
            "passed": sum(1 for s in scores if s >= args.pass_score),
        }
        for name, scores in sorted(by_evaluator.items())
    }
    if args.json:
        bus_cli.emit({"evaluations": rows, "summary": summary}, True)
        return EXIT_OK
    if not rows:
        print("no evaluations recorded" + (f" for run {args.run_id}" if args.run_id else ""))
        return EXIT_OK
    for row in rows:
        score = "error" if row["score"] is None else f"{row['score']:.2f}"
        note = f"  {row['explanation']}" if row["explanation"] else ""
        if row.get("disagrees"):
            note += "  (disagrees with the automated scores)"
        print(f"{row['run_id']}  {row['agent']:<12} {row['evaluator']:<20} {score}{note}")
    for name, stats in summary.items():
        print(
            f"{name}: {stats['count']} scored, mean {stats['mean']:.2f}, "
            f"{stats['passed']}/{stats['count']} at or above {args.pass_score:g}"
        )
    return EXIT_OK


def _verdict(event: Any) -> dict[str, str]:
    try:
        body = msgspec.json.decode(event.result) if len(event.result) else {}
    except msgspec.DecodeError:
        body = {}
    if not isinstance(body, dict):  # an event's body is another party's data: never trusted
        body = {}
    return {"label": str(body.get("label", "")), "explanation": str(body.get("explanation", ""))}


def register(sub: Any) -> None:
    p = sub.add_parser("trace", help="a run's tree: agents, steps, tool/LLM calls, timings, cost")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=trace_run)

    p = sub.add_parser("eval", help="evaluation scores of a run, or of every run since a time")
    p.add_argument("run_id", nargs="?", default=None)
    p.add_argument("--since", default=None, help="e.g. 30m, 1h, 2d")
    p.add_argument("--pass-score", type=float, default=0.5, help="a score at or above passes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=eval_report)
