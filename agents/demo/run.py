"""`relaybus demo`: the seed scenario end to end — "compile a competitive analysis and send it
to my team" — with every layer on.

It starts the embedded stack (nats-server, identity, ledger, memory), the scripted model and a
recording SMTP server (unless RELAYBUS_LLM_BASE_URL / RELAYBUS_SMTP_URL point at real ones) and
every agent as its own process; registers the demo user with a budget; publishes the request;
prints the run's events as they happen; then the report, where it went, what was refused, the
cost from the ledger and the run's tree. Everything it started is stopped by pid at the end,
and what the stack stored stays under RELAYBUS_HOME: `relaybus up --detach` brings the run back
for `trace`, `ledger statement`, …; `--keep` leaves the stack running instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from relaybus.bus import Bus, ConfigError, RelayError, Settings
from relaybus.bus.cli import event_line
from relaybus.bus.feed import EventFeed
from relaybus.bus.private import write_private
from relaybus.bus.stack import is_alive, read_stack
from relaybus.bus.supervisor import start_detached, stop_stack
from relaybus.services.identity.client import read_audit
from relaybus.services.runs.state import ENDED

from ..observe import ledger_run_cost, load_tree
from ..runtree import render
from ..settings import LlmSettings, ToolSettings
from ..submit import outcome_of, run_store, submit
from .procs import SELF_COMMAND, Processes
from .setup import (
    DEMO_USER,
    RUN_BUDGET,
    SPECS,
    TOKEN_FILE,
    register_demo,
    request_payload,
    write_prices,
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="the seed scenario: research, write and email a competitive analysis"
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the run")
    p.add_argument("--budget", type=int, default=RUN_BUDGET, help="the run's budget in micro-units")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the stack running under RELAYBUS_HOME afterwards (`relaybus down` stops it)",
    )
    p.set_defaults(func=demo)


class DemoSummary(msgspec.Struct, kw_only=True):
    run_id: str
    status: str
    error: str | None
    delivered: list[str]
    refused: list[dict[str, str]]
    denials: list[dict[str, str]]
    cost: int
    steps: int
    subject: str = ""
    report: str = ""
    review: list[str] = []  # why the run waits for a human verdict (agents/review.py)


async def demo(args: argparse.Namespace, settings: Settings) -> int:
    from ..llm.client import list_models

    say = _printer(sys.stderr if args.json else sys.stdout)
    llm = LlmSettings.of(settings)
    model = llm.llm_model or "scripted"
    if llm.llm_base_url and not llm.llm_model:
        offered = await list_models(settings)
        if not offered:
            raise ConfigError(f"{llm.llm_base_url} offers no models; set RELAYBUS_LLM_MODEL")
        model = offered[0]
    home = settings.home.resolve()
    run_settings = settings.with_values(
        home=home, identity=True, ledger=True, llm_model=model, prices=write_prices(home, model)
    )
    procs = Processes(home / "logs")
    started_stack = False
    summary: DemoSummary | None = None
    try:
        if not LlmSettings.of(run_settings).llm_base_url:
            url = procs.start_server("model", "RELAYBUS_LLM_BASE_URL", "dev", "model")
            say(f"• scripted model (deterministic, not a real LLM) at {url}")
            run_settings = run_settings.with_values(llm_base_url=url)
        else:
            say(f"• LLM: {LlmSettings.of(run_settings).llm_base_url} (model {model})")
        mailbox = None
        if not ToolSettings.of(run_settings).smtp_url:
            mailbox = home / "mailbox.jsonl"
            mailbox.unlink(missing_ok=True)
            url = procs.start_server(
                "smtp", "RELAYBUS_SMTP_URL", "dev", "smtp", "--mailbox", str(mailbox)
            )
            say(f"• recording SMTP server (aiosmtpd) at {url}, mail kept in {mailbox}")
            run_settings = run_settings.with_values(smtp_url=url)
        record = read_stack(run_settings)
        if record is None or not is_alive(record.supervisor):
            await asyncio.to_thread(start_detached, run_settings, SELF_COMMAND)
            started_stack = True
            record = read_stack(run_settings)
        if record is None:
            raise RelayError(f"the stack under {home} did not record itself; see {home}/logs")
        run_settings = run_settings.model_copy(update={"nats_url": record.nats_url})
        say(
            f"• stack under {home}: nats-server + identity, ledger, memory "
            f"({'started' if started_stack else 'already running'})"
        )
        async with Bus(run_settings, name="relaybus-demo") as bus:
            token = await register_demo(bus, home)
            write_private(home / TOKEN_FILE, token.encode())
            say(
                f"• user {DEMO_USER} registered (role analyst, 5 USD a month); "
                f"token in {home / TOKEN_FILE}"
            )
            env = {**run_settings.env(), "RELAYBUS_LOG_LEVEL": "WARNING"}
            for name, spec in SPECS.items():
                proc = procs.start(name, env, "agent", "run", spec)
                say(f"• agent {name:<12} pid {proc.pid}")
            summary = await _run(bus, args, token, mailbox, say)
            if args.json:
                print(json.dumps(msgspec.to_builtins(summary)))
            else:
                _print_summary(summary, say)
                say("• the run's tree (`relaybus trace RUN`):")
                for line in render(await load_tree(bus, summary.run_id)):
                    say("  " + line)
        if args.keep or not started_stack:
            say(f"• the stack keeps running under {home}; `relaybus down` stops it")
    finally:
        procs.stop_all()
        if started_stack and not args.keep:
            await asyncio.to_thread(stop_stack, run_settings)
            say(
                f"• the stack is stopped; its runs stay under {home}: `relaybus up --detach`, "
                f"then `relaybus trace {summary.run_id}` (or run the demo with --keep)"
                if summary is not None
                else f"• the stack is stopped; its logs stay in {home}/logs"
            )
    assert summary is not None  # _run returned, or its error went up
    if summary.status != "completed":
        hint = (
            f" (the run's budget was --budget {args.budget} micro-units)"
            if "BudgetExceeded" in (summary.error or "")
            else f"; agent logs are in {home}/logs"
        )
        raise RelayError(f"demo run {summary.run_id} {summary.status}: {summary.error}{hint}")
    return 0


async def _run(
    bus: Bus, args: argparse.Namespace, token: str, mailbox: Path | None, say: Any
) -> DemoSummary:
    from ..tools.mailbox import read_mailbox

    payload = json.dumps(request_payload()).encode()
    accepted = await submit(
        bus, "orchestrator", payload, sender=f"user:{DEMO_USER}", token=token, budget=args.budget
    )
    run_id = accepted.run_id
    say(f"• published to orchestrator as {DEMO_USER}: run {run_id} — live events:")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    outcome = None
    async with EventFeed(bus, run_id, replay=True) as feed:
        while outcome is None and (event := await feed.next(deadline - loop.time())) is not None:
            say("  " + event_line(event))
            if event.kind in ENDED and not event.parent_id:
                outcome = outcome_of(event)
    status = outcome.status if outcome else "timeout"
    error = outcome.error if outcome else f"no result within {args.timeout:g}s"
    result = outcome.result if outcome and isinstance(outcome.result, dict) else {}
    record = await (await run_store(bus)).get(run_id)
    delivered = (
        [to for mail in read_mailbox(mailbox) for to in mail["rcpt_tos"]]
        if mailbox is not None
        else list(result.get("sent_to", []))
    )
    denials = [
        {"actor": r.actor, "action": r.action, "tool": r.tool, "reason": r.reason}
        for r in await read_audit(bus, DEMO_USER, run_id=run_id, decision="deny")
    ]
    from ..review import Reviewer, Reviews

    in_review = [i for i in await Reviews(bus).items(Reviewer()) if i.run_id == run_id]
    return DemoSummary(
        review=[r for i in in_review for r in i.reasons],
        run_id=run_id,
        status=status,
        error=error,
        delivered=delivered,
        refused=list(result.get("refused", [])),
        denials=denials,
        cost=await ledger_run_cost(bus, run_id) or 0,
        steps=record.steps if record else 0,
        subject=str(result.get("subject", "")),
        report=str(result.get("report", "")),
    )


def _print_summary(s: DemoSummary, say: Any) -> None:
    say(f"• run {s.run_id}: {s.status}" + (f" — {s.error}" if s.error else ""))
    if s.report:
        say(f"• the report ({s.subject}):")
        for line in s.report.splitlines():
            say("  │ " + line)
    say(f"• delivered to: {', '.join(s.delivered) or 'nobody'}")
    for r in s.refused:
        say(f"• refused: mail to {r.get('to')} — {r.get('reason')}")
    for d in s.denials:
        say(f"• audit: deny {d['action']} by {d['actor']}: {d['reason']}")
    if s.review:
        say(
            f"• in human review ({'; '.join(s.review)}): `relaybus review show {s.run_id}`, "
            f"`relaybus review score {s.run_id} pass|fail` (run the demo with --keep to score it)"
        )
    say(
        f"• cost (from the ledger): {s.cost} micro-units = {s.cost / 1e6:.6f} USD; steps: {s.steps}"
    )


def _printer(stream: Any) -> Any:
    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    return say
