"""`relaybus memory …`: ingest documents, search, stats, garbage collection.

`ingest` and `search` act for `--as USER`: with RELAYBUS_IDENTITY on, `--token` gets a one-link
chain from the identity service; without identity (development) the name alone is taken.
`stats` and `gc` without `--as` are the operator's cross-tenant maintenance (`admin_stats`,
`admin_gc`: subjects only operator and service connections may publish to); with `--as USER`
they cover that user's memories only, like any tenant operation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from relaybus.bus import Bus, Settings, new_id, rpc
from relaybus.bus.cli import emit, emit_rows
from relaybus.bus.runtime import EXIT_OK
from relaybus.services.identity.client import IdentityClient

from .client import MemoryClient
from .gc import parse_ttl, policy_from
from .ingest_cli import SUFFIXES, ingest_documents, progress_for, read_documents, summary_line
from .messages import Caller


def register(sub: Any) -> None:
    memory = sub.add_parser("memory", help="documents and memories of one tenant").add_subparsers(
        dest="memory_cmd", required=True
    )
    p = memory.add_parser(
        "ingest",
        help=f"chunk files (a file or a folder of {'/'.join(SUFFIXES)}) into a collection, "
        "in bounded steps with progress (re-running adds nothing twice)",
    )
    p.add_argument("path", type=Path)
    p.add_argument("--collection", required=True)
    p.add_argument("--as", dest="as_user", required=True)
    p.add_argument("--token", help="USER's API token (needed when RELAYBUS_IDENTITY=1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=ingest)
    p = memory.add_parser("search", help="search documents (and memories with --memories)")
    p.add_argument("query")
    p.add_argument("--collection", default="")
    p.add_argument("--as", dest="as_user", required=True)
    p.add_argument("--token", help="USER's API token (needed when RELAYBUS_IDENTITY=1)")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--memories", action="store_true", help="search long-term memories instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=search)
    p = memory.add_parser("stats", help="how much is stored (every tenant, or --as USER's)")
    _tenant_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=stats)
    p = memory.add_parser(
        "gc", help="remove superseded facts past retention and memories past their TTL"
    )
    _tenant_args(p)
    p.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    # defaults: the background pass's RELAYBUS_MEMORY_* policy
    p.add_argument("--retention-days", type=float)
    p.add_argument("--ttl", action="append", default=[], metavar="KIND=DAYS")
    p.add_argument("--cap", type=int, help="current memories kept per tenant (0: no cap)")
    p.add_argument("--half-life-days", type=float)
    p.add_argument("--duplicate-score", type=float, help="near-duplicate cosine (0: no sweep)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=gc)


def _tenant_args(p: Any) -> None:
    p.add_argument(
        "--as", dest="as_user", default="", help="only USER's memories (default: every tenant)"
    )
    p.add_argument("--token", help="USER's API token (needed when RELAYBUS_IDENTITY=1)")


async def _client(bus: Bus, args: argparse.Namespace, scope: str) -> MemoryClient:
    """Act for `--as USER`: with `--token`, through a one-link chain the identity service stamps
    (user → the memory service, narrowed to `scope`); without, only while identity is off."""
    run_id = new_id()
    if not args.token:
        return MemoryClient(
            bus, Caller(run_id=run_id, agent="cli", principal=f"user:{args.as_user}")
        )
    link = await IdentityClient(bus).root(args.as_user, args.token, run_id, "memory", [scope])
    return MemoryClient(
        bus, Caller(run_id=run_id, agent="memory", principal=f"user:{args.as_user}", chain=[link])
    )


async def ingest(args: argparse.Namespace, settings: Settings) -> int:
    documents = read_documents(args.path)
    async with Bus(settings, name="relaybus-memory") as bus:
        client = await _client(bus, args, "memory/write")
        progress = progress_for(len(documents), args.json)
        summary = await ingest_documents(client, args.collection, documents, progress)
    emit(summary, args.json, summary_line(summary))
    return EXIT_OK


async def search(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-memory") as bus:
        client = await _client(bus, args, "memory/read")
        hits = (
            await client.recall(args.query, k=args.k)
            if args.memories
            else await client.search_docs(args.query, k=args.k, collection=args.collection)
        )
    emit_rows(
        hits,
        args.json,
        lambda hit: (
            f"{hit['score']:.4f}  {hit.get('source', hit.get('kind', ''))}  "
            f"{hit['text'][:100].replace(chr(10), ' ')}"
        ),
        "nothing found",
    )
    return EXIT_OK


async def stats(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-memory") as bus:
        if args.as_user:
            result = await (await _client(bus, args, "memory/read")).stats()
        else:
            result = await rpc.call(bus, bus.subjects.service("memory", "admin_stats"), {})
    emit(result, args.json, json.dumps(result))
    return EXIT_OK


async def gc(args: argparse.Namespace, settings: Settings) -> int:
    policy = policy_from(settings)
    changes: dict[str, Any] = {"dry_run": args.dry_run}
    if args.ttl:
        changes["ttl_s"] = {**policy.ttl_s, **parse_ttl(args.ttl)}
    if args.retention_days is not None:
        changes["retention_s"] = args.retention_days * 86400
    if args.half_life_days is not None:
        changes["half_life_s"] = args.half_life_days * 86400
    if args.cap is not None:
        changes["cap"] = args.cap
    if args.duplicate_score is not None:
        changes["duplicate_score"] = args.duplicate_score
    body = msgspec.structs.replace(policy, **changes)
    async with Bus(settings, name="relaybus-memory") as bus:
        if args.as_user:
            scope = "memory/read" if args.dry_run else "memory/write"
            client = await _client(bus, args, scope)
            result = await client.gc(**msgspec.structs.asdict(body))
        else:
            result = await rpc.call(bus, bus.subjects.service("memory", "admin_gc"), body)
    emit(
        result,
        args.json,
        f"{len(result['candidates'])} candidate(s); removed {result['removed']}"
        f"{' (dry run)' if result['dry_run'] else ''}",
    )
    return EXIT_OK
