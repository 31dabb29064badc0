"""`relaybus identity …` and `relaybus service identity`."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
from nacl.signing import SigningKey

from relaybus.bus import Bus, ConfigError, Settings
from relaybus.bus.cli import emit, emit_rows, when
from relaybus.bus.runtime import EXIT_OK
from relaybus.bus.subjects import check_name
from relaybus.services.ledger.settings import LedgerSettings

from .client import IdentityClient, agent_key_path, read_agent_key, read_audit, write_agent_key
from .messages import token_id_of, token_user
from .natsconfig import authorization_block, new_nkey_seed, nkey_path, nkey_public, write_nkey
from .registry import Registry


def register(sub: Any) -> None:
    identity = sub.add_parser(
        "identity", help="agents, users, tokens, revocation, chains"
    ).add_subparsers(dest="identity_cmd", required=True)

    agent = identity.add_parser("agent", help="registered agents").add_subparsers(
        dest="agent_cmd", required=True
    )
    p = agent.add_parser("add", help="register an agent (creates its key under RELAYBUS_HOME/keys)")
    p.add_argument("name")
    p.add_argument("--scope", action="append", default=[], help="a scope it may ever hold (repeat)")
    p.add_argument(
        "--handoff-to", action="append", default=[], help="an agent it may delegate to (repeat)"
    )
    p.add_argument(
        "--new-key",
        action="store_true",
        help="give it new keys (its running replicas must restart); by default an agent "
        "registered again keeps the keys under RELAYBUS_HOME/keys and only its scopes change",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=agent_add)
    p = agent.add_parser("list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=agent_list)
    p = agent.add_parser("revoke")
    p.add_argument("name")
    p.add_argument("--reason", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a, s: revoke(a, s, "agent", a.name))

    user = identity.add_parser("user", help="users and their tokens").add_subparsers(
        dest="user_cmd", required=True
    )
    p = user.add_parser("add")
    p.add_argument("id")
    p.add_argument("--scope", action="append", default=[])
    p.add_argument("--role", action="append", default=[])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=user_add)
    p = user.add_parser("list", help="users, with scopes, roles and their live tokens' ids")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=user_list)
    p = user.add_parser("token", help="issue an API token (printed once)")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=user_token)
    p = user.add_parser("revoke", help="revoke a user, or one of its tokens with --token")
    p.add_argument("id")
    p.add_argument("--token", default=None, help="the token id (8 hex digits), or the whole token")
    p.add_argument("--reason", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(
        func=lambda a, s: revoke(a, s, "token", a.token) if a.token else revoke(a, s, "user", a.id)
    )

    role = identity.add_parser("role", help="roles: named sets of scopes").add_subparsers(
        dest="role_cmd", required=True
    )
    p = role.add_parser("add")
    p.add_argument("name")
    p.add_argument("--scope", action="append", default=[])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=role_add)

    p = identity.add_parser(
        "nats-config", help="the nats-server authorization block for the registry"
    )
    p.add_argument(
        "--admin",
        action="append",
        default=[],
        metavar="USER:PASSWORD",
        help="a full-access user for services and operators (repeat)",
    )
    p.set_defaults(func=nats_config)

    p = identity.add_parser("audit", help="a user's authorization decisions (the audit log)")
    p.add_argument("user")
    p.add_argument("--run", default="", help="only this run's decisions")
    p.add_argument("--deny", action="store_true", help="only denials")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=audit_log)

    link = identity.add_parser("link", help="delegation links").add_subparsers(
        dest="link_cmd", required=True
    )
    p = link.add_parser("revoke")
    p.add_argument("id", help="the link id from `identity chain RUN`")
    p.add_argument("--reason", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a, s: revoke(a, s, "link", a.id))


async def nats_config(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-identity") as bus:
        agents = await (await Registry.open(bus)).all_agents()
        block = authorization_block(
            bus.subjects,
            agents,
            dict(pair.split(":", 1) for pair in args.admin),
            LedgerSettings.of(settings).ledger_partitions,
        )
    print(block, end="")
    return EXIT_OK


async def agent_add(args: argparse.Namespace, settings: Settings) -> int:
    home = settings.home.resolve()
    check_name("agent", args.name)  # before anything: the name names its key files
    # an agent registered again keeps its keys: new ones would lock its running replicas out
    kept = (
        not args.new_key
        and agent_key_path(home, args.name).exists()
        and nkey_path(home, args.name).exists()
    )
    if kept:
        key, seed = read_agent_key(home, args.name), nkey_path(home, args.name).read_bytes().strip()
    else:
        key, seed = SigningKey.generate(), new_nkey_seed()
    # registered first, stored after: a refused registration leaves the agent's keys as they were
    async with Bus(settings, name="relaybus-identity") as bus:
        await IdentityClient(bus).add_agent(
            args.name, key.verify_key, args.scope, args.handoff_to, nkey_public(seed)
        )
    if not kept:
        write_agent_key(home, args.name, key)
        write_nkey(home, args.name, seed)
    keys = home / "keys"
    text = (
        f"agent {args.name} registered again with these scopes; its keys in {keys} are unchanged"
        if kept
        else f"agent {args.name} registered; its key is in {keys}"
    )
    emit(
        {
            "name": args.name,
            "scopes": args.scope,
            "handoff_to": args.handoff_to,
            "new_key": not kept,
        },
        args.json,
        text,
    )
    return EXIT_OK


async def audit_log(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-identity") as bus:
        records = await read_audit(
            bus, args.user, run_id=args.run, decision="deny" if args.deny else ""
        )
    emit_rows(
        [msgspec.to_builtins(r) for r in records],
        args.json,
        lambda r: (
            f"{when(r['time'])} {r['decision']:<5} {r['actor']:<20} {r['action']:<24} "
            f"run={r.get('run_id') or '-'}" + (f"  {r['reason']}" if r.get("reason") else "")
        ),
        "no audit records match",
    )
    return EXIT_OK


async def agent_list(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-identity") as bus:
        agents = await IdentityClient(bus).list_agents()
    emit_rows(
        agents,
        args.json,
        lambda agent: (
            f"{agent['name']:<16} scopes={','.join(agent.get('scopes', []))} "
            f"handoff_to={','.join(agent.get('handoff_to', []))}"
        ),
        "no agents registered; `relaybus identity agent add NAME --scope …`",
    )
    return EXIT_OK


async def user_list(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-identity") as bus:
        users = await IdentityClient(bus).list_users()
    emit_rows(
        users,
        args.json,
        lambda u: (
            f"{u['id']:<16} scopes={','.join(u['scopes']) or '-'} roles={','.join(u['roles']) or '-'}"
            f" tokens={','.join(u['tokens']) or '-'}" + ("  REVOKED" if u["revoked"] else "")
        ),
        "no users yet; `relaybus identity user add ID --scope …`",
    )
    return EXIT_OK


async def user_add(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-identity") as bus:
        await IdentityClient(bus).add_user(args.id, args.scope, args.role)
    emit({"id": args.id}, args.json, f"user {args.id} saved")
    return EXIT_OK


async def user_token(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-identity") as bus:
        issued = await IdentityClient(bus).issue_token(args.id)
    emit(issued, args.json, issued["token"])
    return EXIT_OK


async def role_add(args: argparse.Namespace, settings: Settings) -> int:
    async with Bus(settings, name="relaybus-identity") as bus:
        await IdentityClient(bus).add_role(args.name, args.scope)
    emit({"name": args.name}, args.json, f"role {args.name} saved")
    return EXIT_OK


async def revoke(args: argparse.Namespace, settings: Settings, kind: str, ident: str) -> int:
    user = ""
    if kind == "token":  # `--token` takes the id, or the whole token (only its id is sent)
        user = args.id
        if ident.startswith("rb_"):
            if token_user(ident) != user or not token_id_of(ident):
                raise ConfigError(f"that token is not one of user {user!r}'s; nothing was revoked")
            ident = token_id_of(ident)
    async with Bus(settings, name="relaybus-identity") as bus:
        done = await IdentityClient(bus).revoke(kind, ident, args.reason, user=user)
    text = f"{kind} {ident} revoked" if done else f"{kind} {ident} was revoked already"
    emit({"revoked": f"{kind}:{ident}", "already": not done}, args.json, text)
    return EXIT_OK
