"""`relaybus ledger …`: budgets, balances, holds, refunds, statements."""

from __future__ import annotations

import argparse
import csv
import re
import sys
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from relaybus.bus import Bus, Settings, new_id
from relaybus.bus.cli import emit, emit_rows, money
from relaybus.bus.runtime import EXIT_OK
from relaybus.bus.subjects import is_name
from relaybus.services.ledger.errors import LedgerError
from relaybus.services.ledger.settings import LedgerSettings

from .client import LedgerClient
from .model import Budget
from .ops import BUDGET_FIELDS

_PERIOD = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")


def register(sub: Any) -> None:
    ledger = sub.add_parser(
        "ledger", help="budgets, balances, holds, refunds, statements"
    ).add_subparsers(dest="ledger_cmd", required=True)

    p = ledger.add_parser(
        "budget",
        help="set a budget: user:ID, run:RUN or agent:NAME",
        description="Sets the limits given; a limit not given keeps its value. 0 removes a limit.",
    )
    p.add_argument("level")
    p.add_argument("--limit", type=int, help="max cost in micro-units (0: no limit)")
    p.add_argument(
        "--period", choices=["daily", "monthly", "none"], help="the limit resets each period"
    )
    p.add_argument("--max-steps", type=int, help="journaled steps allowed (0: no limit)")
    p.add_argument("--max-tokens", type=int, help="LLM tokens allowed (0: no limit)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=budget)

    for name, helptext in (
        ("balance", "account balances"),
        ("account", "account balances (alias)"),
    ):
        p = ledger.add_parser(name, help=helptext)
        p.add_argument("account", nargs="?", default=None)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=balance)

    p = ledger.add_parser("holds", help="open holds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=holds)

    p = ledger.add_parser("levels", help="spent / held / remaining per budget level")
    p.add_argument("--level", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=levels)

    p = ledger.add_parser("refund", help="refund part of a captured transfer")
    p.add_argument("transfer")
    p.add_argument("amount", type=int)
    p.add_argument("--id", default=None, help="idempotency key (default: a new one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=refund)

    p = ledger.add_parser(
        "rate", help="rate limit for an (agent, resource) key, e.g. agent:research/tool:search"
    )
    p.add_argument("key")
    p.add_argument("--rpm", type=int, default=0, help="requests per minute (0: none)")
    p.add_argument("--tpm", type=int, default=0, help="tokens per minute (0: none)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=rate)

    p = ledger.add_parser("statement", help="a user's charges and refunds in a period")
    p.add_argument("user")
    p.add_argument(
        "--period", default="", help="YYYY-MM or YYYY-MM-DD (default: this month, ledger time zone)"
    )
    p.add_argument("--csv", action="store_true", help="the lines as CSV, for a spreadsheet")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=statement)


async def budget(args: argparse.Namespace, settings: Settings) -> int:
    if not re.match(r"^(user|run|agent):[A-Za-z0-9_-]+$", args.level):
        raise LedgerError(f"budget level {args.level!r} must be user:ID, run:RUN or agent:NAME")
    given = {name: getattr(args, name) for name in BUDGET_FIELDS if getattr(args, name) is not None}
    if not given:
        raise LedgerError(
            f"nothing to set for {args.level}: give --limit, --period, --max-steps or --max-tokens"
        )
    if given.get("period") == "none":
        given["period"] = ""
    spec = Budget(level=args.level, **given)
    async with Bus(settings, name="relaybus-ledger") as bus:
        result = await LedgerClient(bus).set_budget(new_id(), spec, only=list(given))
    emit(result, args.json, describe_budget(result, LedgerSettings.of(settings).ledger_currency))
    return EXIT_OK


def describe_budget(budget: dict[str, Any], currency: str) -> str:
    """`budget user:alice: limit 5.00 USD monthly, max steps 10`: what is in force now."""
    limit = money(budget["limit"], currency) if budget.get("limit") else "none"
    text = f"budget {budget['level']}: limit {limit} {budget.get('period') or ''}".rstrip()
    for name, label in (("max_steps", "max steps"), ("max_tokens", "max tokens")):
        if budget.get(name):
            text += f", {label} {budget[name]}"
    return text


async def balance(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-ledger") as bus:
        rows = await LedgerClient(bus).query("balance", account=args.account)
    emit_rows(
        rows if isinstance(rows, list) else [rows],
        args.json,
        lambda row: f"{row['account']:<24} {money(row['balance'], row['currency']):>20}",
        "no accounts yet",
    )
    return EXIT_OK


async def holds(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-ledger") as bus:
        rows = await LedgerClient(bus).query("holds")
    currency = LedgerSettings.of(settings).ledger_currency
    emit_rows(
        rows,
        args.json,
        lambda row: (
            f"{row['id']}  {row['payer']} → {row['payee']}  "
            f"{money(row['amount'], row.get('currency') or currency)}"
        ),
        "no open holds",
    )
    return EXIT_OK


async def levels(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-ledger") as bus:
        rows = await LedgerClient(bus).query("levels", level=args.level)
    currency = LedgerSettings.of(settings).ledger_currency
    emit_rows(
        rows,
        args.json,
        lambda row: (
            f"{row['level']:<28} spent={money(row['spent'], currency)} "
            f"held={money(row['held'], currency)} "
            f"limit={money(row['limit'], currency) if row['limit'] else '-'} "
            f"remaining={money(row['remaining'], currency) if row['remaining'] is not None else '-'}"
            + (f" steps={row['steps']}/{row['max_steps']}" if row.get("max_steps") else "")
            + (f" tokens={row['tokens']}/{row['max_tokens']}" if row.get("max_tokens") else "")
        ),
        "no budget levels yet",
    )
    return EXIT_OK


async def refund(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-ledger") as bus:
        result = await LedgerClient(bus).refund(args.id or new_id(), args.transfer, args.amount)
    emit(
        result,
        args.json,
        f"refunded {args.amount} on {args.transfer}; {result['refundable']} left refundable",
    )
    return EXIT_OK


async def rate(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-ledger") as bus:
        result = await LedgerClient(bus).set_rate_limit(new_id(), args.key, args.rpm, args.tpm)
    emit(result, args.json, f"rate limit {args.key}: {args.rpm} rpm, {args.tpm} tpm")
    return EXIT_OK


async def statement(args: argparse.Namespace, settings: Settings) -> int:
    if not args.period:
        timezone = ZoneInfo(LedgerSettings.of(settings).ledger_timezone)
        args.period = datetime.now(timezone).strftime("%Y-%m")
    if not _PERIOD.match(args.period) or not _real_date(args.period):
        raise LedgerError(
            f"period {args.period!r} must be YYYY-MM or YYYY-MM-DD, a real month or day"
        )
    user = args.user.removeprefix("user:")  # the budget level's spelling names the user too
    if not is_name(user):
        raise LedgerError(f"a statement is a user's: give USER or user:USER, not {args.user!r}")
    async with Bus(settings, name="relaybus-ledger") as bus:
        result = await LedgerClient(bus).query("statement", user=user, period=args.period)
    currency = LedgerSettings.of(settings).ledger_currency
    if args.json:
        emit(result, True, "")
    elif args.csv:
        write_csv(result["lines"], sys.stdout)
    else:
        for line in result["lines"]:
            what = line.get("payee") or line.get("tool") or line.get("model") or ""
            print(
                f"{_day(line['time'])}  {line['category']:<10} {line['kind']:<8} "
                f"{money(line['amount'], line['currency']):>16}  {what:<16} "
                f"run={line.get('run', '-')}"
            )
        totals = result["totals"]
        print(
            f"agent costs {money(totals['agent_costs'], currency)}  "
            f"payments {money(totals['payments'], currency)}  "
            f"refunds {money(totals['refunds'], currency)}  "
            f"total {money(result['total'], currency)}"
        )
    return EXIT_OK


CSV_COLUMNS = [
    "time",
    "category",
    "kind",
    "transfer",
    "amount",
    "currency",
    "run",
    "agent",
    "tool",
    "model",
    "payee",
]


def _real_date(period: str) -> bool:
    try:
        datetime.strptime(period, "%Y-%m-%d" if period.count("-") == 2 else "%Y-%m")
    except ValueError:
        return False
    return True


def write_csv(lines: list[dict[str, Any]], out: Any) -> None:
    """The statement's lines as CSV (amounts in micro-units; negative: refunds)."""
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for line in lines:
        writer.writerow({**line, "time": datetime.fromtimestamp(line["time"], UTC).isoformat()})


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")
