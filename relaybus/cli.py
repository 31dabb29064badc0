"""The `relaybus` command: a thin top layer gathering each package's subcommands."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import functools
import importlib
import inspect
import json
import os
import re
import sys
from typing import TYPE_CHECKING, Any

from relaybus.agents.observe import register as register_observe
from relaybus.bus import Bus, RelayError, Settings
from relaybus.bus import cli as bus_cli
from relaybus.bus.runtime import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    setup_logging,
)
from relaybus.bus.subjects import check_name
from relaybus.bus.telemetry import Telemetry
from relaybus.services.runs.shown import shown, shown_one
from relaybus.services.runs.state import ENDED

if TYPE_CHECKING:
    from relaybus.agents.base import Agent

# Each command imports what it runs inside its handler: every service and agent process starts
# through this module, and none of them should pay for the MCP SDK, the console or the demo.

SELF_COMMAND = [sys.executable, "-m", "relaybus.cli"]


def stack_services(settings: Settings) -> dict[str, list[str]]:
    """The service processes `relaybus up` starts beside nats-server: one ledger writer per
    partition (`ledger-p1`: the supervisor names a partition's process `<service>-<partition>`)."""
    from relaybus.services.ledger.partitions import names
    from relaybus.services.ledger.settings import LedgerSettings

    partitions = LedgerSettings.of(settings).ledger_partitions
    ledgers = {
        ("ledger" if partitions == 1 else f"ledger-{p}"): [
            *SELF_COMMAND,
            "service",
            "ledger",
            *(() if partitions == 1 else ("--partition", p)),
        ]
        for p in names(partitions)
    }
    return {
        "identity": [*SELF_COMMAND, "service", "identity"],
        **ledgers,
        "memory": [*SELF_COMMAND, "service", "memory"],
        "ingress": [*SELF_COMMAND, "service", "ingress"],
    }


async def service(args: argparse.Namespace, settings: Settings) -> Any:
    if args.name == "identity":
        from relaybus.services.identity.service import serve_identity as serve
    elif args.name == "ledger":
        from relaybus.services.ledger.server import serve_ledger

        serve = functools.partial(serve_ledger, partition=args.partition)
    elif args.name == "ingress":
        from relaybus.agents.ingress import serve_ingress as serve
    else:
        from relaybus.memory.service import serve_memory as serve
    with Telemetry(args.name, settings, args.metrics_port):
        return await serve(settings)


async def identity_chain(args: argparse.Namespace, settings: Settings) -> int:
    """Every delegation link of a run, decoded, root first (read from the run's journal)."""
    from relaybus.agents.observe import chain_of

    async with Bus(settings, name="relaybus-identity") as bus:
        links = await chain_of(bus, args.run_id)
    if not links:
        raise RelayError(f"no delegation chain recorded for run {args.run_id}")
    bus_cli.emit_rows(
        links,
        args.json,
        lambda row: (
            f"{'  ' * row['depth_in_chain']}{row['issuer']} → agent:{row['subject']}  "
            f"[{', '.join(row['scopes'])}]  id={row['id']}"
        ),
    )
    return EXIT_OK


def _stack_auth(settings: Settings) -> Any:
    from relaybus.bus import Subjects
    from relaybus.services.identity.natsconfig import RegistryAuth
    from relaybus.services.ledger.settings import LedgerSettings

    partitions = LedgerSettings.of(settings).ledger_partitions
    return RegistryAuth(Subjects(settings.prefix), partitions)


bus_cli.register_auth(_stack_auth)


def load_agent(spec: str) -> type[Agent]:
    """`MODULE:CLASS`, importable from the current directory."""
    from relaybus.agents.base import Agent, handler_problem

    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise RelayError(
            f"{spec!r} is not MODULE:CLASS (for example relaybus.agents.demo.echo:Echo)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RelayError(f"cannot import {module_name!r}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        agents = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, Agent) and v is not Agent
        )
        what = "has no" if cls is None else "has a non-Agent"
        close = difflib.get_close_matches(class_name, agents, n=1)
        meant = f"; did you mean {module_name}:{close[0]}?" if close else ""
        raise RelayError(
            f"{module_name} {what} {class_name!r}{meant} (its Agent subclasses: "
            f"{', '.join(agents) or 'none'})"
        )
    if not cls.name:
        raise RelayError(f'{spec!r} has no `name`; set `name = "..."` on the class')
    if problem := handler_problem(cls):
        raise RelayError(problem)
    return cls


def agent_run(args: argparse.Namespace, settings: Settings) -> Any:
    cls = load_agent(args.spec)
    if args.replicas < 1 or args.concurrency < 1:
        raise RelayError("--replicas and --concurrency must be at least 1")
    if args.replicas == 1:
        from relaybus.agents.process import serve_agent

        return serve_agent(
            cls(), settings, args.concurrency, args.metrics_port, _retry_policy(cls, args, settings)
        )
    from relaybus.services.identity.natsconfig import nkey_path

    if settings.nats_auth and not nkey_path(settings.home.resolve(), cls.name).exists():
        from relaybus.agents.process import (
            register_on_first_run,  # once, before the replicas race to it
        )

        asyncio.run(register_on_first_run(cls(), settings))
    return _supervise_replicas(args, settings)


def _retry_policy(cls: type[Agent], args: argparse.Namespace, settings: Settings) -> Any:
    """The class's retry policy with what the command line overrides; None when it overrides
    nothing."""
    if args.max_attempts is None and args.backoff is None:
        return None
    from relaybus.bus import RetryPolicy

    base = cls.retry or RetryPolicy(attempts=settings.max_deliver)
    return RetryPolicy(
        attempts=base.attempts if args.max_attempts is None else args.max_attempts,
        backoff_s=base.backoff_s if args.backoff is None else args.backoff,
        max_backoff_s=max(base.max_backoff_s, args.backoff or 0.0),
    )


def _supervise_replicas(args: argparse.Namespace, settings: Settings) -> int:
    """Start N replica processes sharing one durable consumer; forward SIGTERM/SIGINT to them."""
    argv = [
        *SELF_COMMAND,
        "agent",
        "run",
        args.spec,
        "--replicas",
        "1",
        "--concurrency",
        str(args.concurrency),
        *(() if args.max_attempts is None else ("--max-attempts", str(args.max_attempts))),
        *(() if args.backoff is None else ("--backoff", str(args.backoff))),
    ]
    env = {**os.environ, **settings.env()}
    port = args.metrics_port
    from relaybus.agents.replicas import Replicas

    commands = [
        argv if port is None else [*argv, "--metrics-port", str(port + i)]
        for i in range(args.replicas)
    ]
    return Replicas(commands, env, name=args.spec).run()


async def publish(args: argparse.Namespace, settings: Settings) -> int:
    from relaybus.agents.submit import check_submission, has_consumer, parse_payload
    from relaybus.client import Client

    if args.agent.lstrip().startswith(("{", "[", '"')):
        raise RelayError(
            f"the agent comes first: relaybus publish AGENT JSON (got {args.agent[:40]!r} as the agent)"
        )
    payload = parse_payload(args.payload)
    check_submission(  # every value refused before anything is sent, `--timeout` too
        args.max_hops,
        args.max_steps,
        args.deadline,
        args.budget,
        args.timeout if args.wait else None,
    )
    async with Client(
        settings, user=args.as_user, token=args.token, name="relaybus-publish"
    ) as client:
        if not await has_consumer(client.bus, args.agent):
            running = [a["name"] for a in await bus_cli.list_agents(client.bus)]
            close = difflib.get_close_matches(args.agent, running, n=1)
            print(
                f"note: no agent {args.agent!r} has started yet; the task waits until one does"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                file=sys.stderr,
            )
        run = await client.submit(
            args.agent,
            payload,
            run_id=args.run_id,
            max_hops=args.max_hops,
            max_steps=args.max_steps,
            deadline_s=args.deadline,
            budget=args.budget,
        )
        if not args.wait:
            bus_cli.emit({"run_id": run.run_id}, args.json, run.run_id)
            return EXIT_OK
        if sys.stderr.isatty():
            print(
                f"waiting up to {args.timeout:g}s for the run to end…", file=sys.stderr, flush=True
            )
        outcome = await run.outcome(args.timeout)
    out = outcome.as_json()
    bus_cli.emit(
        out,
        args.json,
        json.dumps(outcome.result)
        if outcome.status == "completed"
        else f"run {outcome.run_id} {outcome.status}",
    )
    if outcome.status == "completed":
        return EXIT_OK
    print(f"error: run {outcome.run_id} {outcome.status}: {outcome.error}", file=sys.stderr)
    return EXIT_TIMEOUT if outcome.status == "timeout" else EXIT_ERROR


async def runs_list(args: argparse.Namespace, settings: Settings) -> int:
    from relaybus.agents.submit import run_store

    async with Bus(settings, name="relaybus-runs") as bus:
        records = await shown(bus, await (await run_store(bus)).recent(args.limit))
    from relaybus.services.ledger.settings import LedgerSettings

    currency = LedgerSettings.of(settings).ledger_currency

    def line(row: dict[str, Any]) -> str:
        took = f"{row['duration_s']:.2f}s" if row["duration_s"] is not None else "-"
        return (
            f"{row['run_id']}  {row['status']:<10} {row['agent']:<14} {took:>8} "
            f"steps={row['steps']:<4} failures={row['failures']:<3} "
            f"cost={bus_cli.money(row['cost'], currency):<14} {bus_cli.when(row['started'])}"
        )

    rows = [record.summary() for record in records]
    if args.json:
        rows = [_json_times(row) for row in rows]
    bus_cli.emit_rows(
        rows, args.json, line, "no runs yet; `relaybus publish AGENT JSON` starts one"
    )
    return EXIT_OK


def _printable(text: str) -> str:
    """`text` with control characters escaped: a handler's exception text never drives the
    operator's terminal."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


def _json_times(row: dict[str, Any]) -> dict[str, Any]:
    """A run summary for JSON: times as ISO 8601 UTC."""
    return {**row, "started": bus_cli.iso(row["started"]), "ended": bus_cli.iso(row["ended"])}


async def run_show(args: argparse.Namespace, settings: Settings) -> int:
    from relaybus.agents.submit import run_store

    check_name("run", args.run_id)
    async with Bus(settings, name="relaybus-runs") as bus:
        record = await (await run_store(bus)).get(args.run_id)
        if record is not None:
            record = await shown_one(bus, record)
    if record is None:
        raise RelayError(f"no run {args.run_id}; `relaybus runs` lists the recent ones")
    row = record.summary()
    if args.json:
        bus_cli.emit(_json_times(row), True)
        return EXIT_OK
    from relaybus.services.ledger.settings import LedgerSettings

    currency = LedgerSettings.of(settings).ledger_currency
    shown = {
        **row,
        "started": bus_cli.when(row["started"]),
        "ended": bus_cli.when(row["ended"]),
        "duration_s": "-" if row["duration_s"] is None else f"{row['duration_s']:.3f}",
        "cost": bus_cli.money(row["cost"], currency),
        "waiting_for": ", ".join(row["waiting_for"]) or None,
    }
    traceback = shown.pop("traceback")
    for key, value in shown.items():
        if value is None:
            continue
        print(f"{key:<12} {json.dumps(value) if isinstance(value, dict | list) else value}")
    if traceback:
        lines = traceback.rstrip().splitlines()
        print("traceback\n" + "\n".join(f"  {_printable(line)}" for line in lines))
    return EXIT_OK


async def cancel(args: argparse.Namespace, settings: Settings) -> int:
    from relaybus.client import Client

    check_name("run", args.run_id)
    async with Client(settings, name="relaybus-cancel") as client:
        record = await client.run(args.run_id).cancel()
    bus_cli.emit(record.summary(), args.json, f"run {args.run_id} cancelled")
    return EXIT_OK


async def approve(args: argparse.Namespace, settings: Settings) -> int:
    from relaybus.agents.submit import parse_payload
    from relaybus.client import Client

    data = json.loads(parse_payload(args.data, "--data"))
    # the signal names who sent it: the login, made a user name (`jane.doe` is `jane_doe`)
    user = re.sub(r"[^A-Za-z0-9_-]", "_", os.environ.get("USER") or "dev")[:64]
    async with Client(settings, user=user, name="relaybus-approve") as client:
        run = client.run(args.run_id)
        waits = (await run.record()).pending_signals()
        if waits and args.signal not in waits:  # a typo would be stored, and waited on for ever
            print(
                f"note: run {args.run_id} waits for {', '.join(map(repr, waits))}, "
                f"not {args.signal!r}",
                file=sys.stderr,
            )
        delivered = await run.signal(args.signal, data)
    text = (
        f"signal {args.signal!r} delivered to run {args.run_id}"
        if delivered
        else f"signal {args.signal!r} stored; run {args.run_id} gets it when it asks"
    )
    bus_cli.emit(
        {"run_id": args.run_id, "signal": args.signal, "delivered": delivered}, args.json, text
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relaybus", description="multi-agent infrastructure over NATS JetStream"
    )
    parser.add_argument("--version", action="version", version=f"relaybus {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    bus_cli.register(sub, SELF_COMMAND, stack_services, run_ends=ENDED)

    agent = sub.add_parser("agent", help="run agents").add_subparsers(
        dest="agent_cmd", required=True
    )
    p = agent.add_parser("run", help="run an agent as its own process(es)")
    p.add_argument("spec", metavar="MODULE:CLASS")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics here (replica i on PORT+i)",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="tries of a failing task before it is dead-lettered (default: the agent's "
        "`retry`, else RELAYBUS_MAX_DELIVER)",
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait before the second try, doubling for each try after (default 0.5)",
    )
    p.set_defaults(func=agent_run)

    p = sub.add_parser("publish", help="submit a task to an agent")
    p.add_argument("agent")
    p.add_argument("payload", metavar="JSON")
    p.add_argument(
        "--as",
        dest="as_user",
        default="",
        help="the user the run acts for (default: the one --token names, else dev)",
    )
    p.add_argument("--token", default=None, help="the user's API token")
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="the run's max cost in micro-units (needs the ledger)",
    )
    p.add_argument(
        "--run-id",
        default=None,
        help="your id for this run (e.g. an order number): publishing it again starts nothing new",
    )
    p.add_argument("--wait", action="store_true", help="wait for the run to end")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait")
    p.add_argument("--max-hops", type=int, default=32, help="handoffs/calls allowed along one line")
    p.add_argument(
        "--max-steps", type=int, default=0, help="journaled steps allowed (default 1000)"
    )
    p.add_argument("--deadline", type=float, default=None, help="seconds the run may take")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=publish)

    p = sub.add_parser("runs", help="recent runs")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=runs_list)

    run = sub.add_parser("run", help="one run").add_subparsers(dest="run_cmd", required=True)
    p = run.add_parser("show", help="a run's status, result, error and steps")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_show)

    p = sub.add_parser("cancel", help="stop a run everywhere")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cancel)

    p = sub.add_parser("approve", help="deliver a signal (an approval by default) to a run")
    p.add_argument("run_id")
    p.add_argument("--signal", default="approval")
    p.add_argument("--data", default="true", help="JSON data for the signal")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=approve)

    p = sub.add_parser("service", help="run one service process in the foreground")
    p.add_argument("name", choices=["identity", "ledger", "memory", "ingress"])
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics here")
    p.add_argument(
        "--partition",
        default="p0",
        help="ledger only: the partition this writer owns (p0 … p{N-1} of "
        "RELAYBUS_LEDGER_PARTITIONS=N)",
    )
    p.set_defaults(func=service)

    from relaybus.services.identity.cli import register as register_identity

    register_identity(sub)
    from relaybus.services.ledger.cli import register as register_ledger

    register_ledger(sub)
    from relaybus.memory.cli import register as register_memory

    register_memory(sub)
    identity_parser = sub.choices["identity"]
    chain_sub = next(
        a for a in identity_parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    p = chain_sub.add_parser("chain", help="a run's delegation chain, decoded")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=identity_chain)

    register_observe(sub)
    from relaybus.agents.review_cli import register as register_review

    register_review(sub)
    from relaybus.agents.llm.cli import register as register_llm

    register_llm(sub)
    from relaybus.services.payments.cli import register as register_payments

    register_payments(sub)
    from relaybus.agents.demo.run import register as register_demo

    register_demo(sub)
    from relaybus.agents.console.cli import register as register_console

    register_console(sub)
    from relaybus.agents.mcp_server.cli import register as register_mcp_server

    register_mcp_server(sub, load_agent)
    from relaybus.agents.a2a.cli import register as register_a2a

    register_a2a(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("relaybus")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        given = sys.argv[1:] if argv is None else argv
        before_command = given.index(extras[0]) < given.index(args.command)
        refuse_unknown(parser, None if before_command else args, extras)
    try:
        settings = Settings.from_env(os.environ)
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level)
    try:
        result = args.func(args, settings)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return int(result or 0)
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `relaybus watch | head`: the reader left; that is not an error
        sys.stderr.close()
        return EXIT_OK


def refuse_unknown(
    parser: argparse.ArgumentParser, args: argparse.Namespace | None, extras: list[str]
) -> None:
    """Unknown arguments, refused by the (sub)command they were given to, with its usage and
    the closest option it has (`publish --wiat`: did you mean --wait?); exits 2."""
    while args is not None:
        chosen = None
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(args, action.dest, None) or "")
        if chosen is None:
            break
        parser = chosen
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    hint = ""
    for extra in extras:
        if close := difflib.get_close_matches(extra.split("=", 1)[0], options, n=1):
            hint = f" (did you mean {close[0]}?)"
            break
    parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


async def _await(result: Any) -> Any:
    return await result


if __name__ == "__main__":
    sys.exit(main())
