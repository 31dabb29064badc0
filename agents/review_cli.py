"""`relaybus review list|show|score|request`: the human review queue from a terminal.

    relaybus review list [--all] [--json]                  # runs waiting for review (yours to see)
    relaybus review show RUN [--json]                      # the run's result, scores, verdicts
    relaybus review score RUN pass|fail [--score 0.8] [--label accurate] [--comment "..."]
    relaybus review request RUN --reason "customer complained"

With identity on, a reviewer is a user: `--as USER --token TOKEN` (or RELAYBUS_USER and
RELAYBUS_TOKEN); what they see and may score is what their `review` scopes cover. Without a
user, the command acts as the local operator (it holds the stack's operator credentials).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from relaybus.bus import Bus, Settings
from relaybus.bus import cli as bus_cli

from .settings import CallerSettings

if TYPE_CHECKING:  # loaded by the command, not by building the CLI's parser
    from .review import Item, Reviewer

EXIT_OK = 0


async def reviewer_of(bus: Bus, args: argparse.Namespace, settings: Settings) -> Reviewer:
    from relaybus.services.identity.client import IdentityClient

    from .review import Reviewer

    caller = CallerSettings.of(settings)
    user = args.as_user or caller.user
    token = args.token or caller.token
    if not user and not token:
        return Reviewer()
    user, scopes = await IdentityClient(bus).scopes_of(token or "", user or "")
    return Reviewer.of(user, scopes)


def _line(item: Item) -> str:
    auto = ", ".join(
        f"{name} {'error' if s is None else f'{s:.2f}'}" for name, s in item.automated.items()
    )
    human = "pending" if item.human is None else f"human {item.human:.2f}"
    flag = "  DISAGREE" if item.disagreement else ""
    return f"{item.run_id}  {item.agent:<12} {human:<12} {auto or '-'}{flag}  ({'; '.join(item.reasons) or 'scored'})"


async def review_command(args: argparse.Namespace, settings: Settings) -> int:
    from .review import Reviews

    async with Bus(settings, name="relaybus-review") as bus:
        reviewer = await reviewer_of(bus, args, settings)
        reviews = Reviews(bus)
        if args.review_cmd == "list":
            items = await reviews.items(reviewer)
            if not args.all:
                items = [
                    i for i in items if not any(v.reviewer == reviewer.name for v in i.verdicts)
                ]
            rows: Any = [i.as_json() for i in items]
            if args.json:
                bus_cli.emit(rows, True)
            elif not items:
                print("nothing to review")
            else:
                print("\n".join(_line(i) for i in items))
        elif args.review_cmd == "show":
            item = await reviews.item(reviewer, args.run_id)
            if args.json:
                bus_cli.emit(item.as_json(), True)
            else:
                print(_line(item))
                print(f"status {item.status}; submitted by {item.principal}")
                if item.error is None:  # JSON, as the run returned it (not a Python repr)
                    print("result: " + json.dumps(item.result, indent=2, ensure_ascii=False))
                else:
                    print(f"error: {item.error}")
                for v in item.verdicts:
                    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.time))
                    print(f"  {when} {v.reviewer}: {v.verdict} {v.score:.2f} {v.label} {v.comment}")
        elif args.review_cmd == "score":
            verdict = await reviews.score(
                reviewer,
                args.run_id,
                args.verdict,
                score=args.score,
                label=args.label,
                comment=args.comment,
            )
            bus_cli.emit(
                {
                    "run_id": verdict.run_id,
                    "reviewer": verdict.reviewer,
                    "verdict": verdict.verdict,
                    "score": verdict.score,
                },
                args.json,
                f"run {verdict.run_id}: {verdict.verdict} {verdict.score:.2f} by {verdict.reviewer}",
            )
        else:
            request = await reviews.request(reviewer, args.run_id, args.reason)
            bus_cli.emit(
                {"run_id": request.run_id, "requested_by": request.by},
                args.json,
                f"run {request.run_id} is in the review queue (asked by {request.by})",
            )
    return EXIT_OK


def register(sub: Any) -> None:
    review = sub.add_parser("review", help="human review of evaluated runs").add_subparsers(
        dest="review_cmd", required=True
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--as", dest="as_user", default="", help="the reviewing user")
    common.add_argument("--token", default="", help="the reviewer's API token")
    common.add_argument("--json", action="store_true")
    p = review.add_parser("list", parents=[common], help="runs waiting for your review")
    p.add_argument("--all", action="store_true", help="also runs you already reviewed")
    p = review.add_parser("show", parents=[common], help="one run in review")
    p.add_argument("run_id")
    p = review.add_parser("score", parents=[common], help="record your verdict on a run")
    p.add_argument("run_id")
    p.add_argument("verdict", choices=["pass", "fail"])
    p.add_argument("--score", type=float, default=None, help="0..1 (default 1 pass, 0 fail)")
    p.add_argument("--label", default="")
    p.add_argument("--comment", default="")
    p = review.add_parser("request", parents=[common], help="send a run to review")
    p.add_argument("run_id")
    p.add_argument("--reason", required=True)
    for parser in review.choices.values():
        parser.set_defaults(func=review_command)
