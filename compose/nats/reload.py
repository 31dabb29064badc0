"""Ask every NATS node to reload its configuration, over the system account.

The `setup` job of compose/docker-compose.yml runs this after it has written the
authorization block it generates from the identity registry (`relaybus identity nats-config`)
into the volume that every node includes. Compose has no supervisor that could send the nodes
SIGHUP, so the nodes are asked over NATS itself: `$SYS.REQ.SERVER.<id>.RELOAD`, sent by the
one user of the system account (compose/nats/auth.conf).

    NATS_SYSTEM_URL=nats://system:PASSWORD@nats1:4222,... python nats-reload.py [--expect N]

Every node of the cluster must answer (N: the number of URLs, unless --expect says otherwise)
and report the reload done; otherwise it exits 1, naming the nodes, and the nodes that did not
reload keep their previous block. A node that is down reads the new file when it starts.
Stdlib and nats-py only: it runs in the relaybus image, mounted from compose/nats/reload.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import nats

PING = "$SYS.REQ.SERVER.PING"
RELOAD = "$SYS.REQ.SERVER.{id}.RELOAD"


async def discover(nc: nats.NATS, expect: int, timeout_s: float) -> dict[str, str]:
    """server id → server name of every node that answers a ping, waiting for `expect`."""
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < expect and time.monotonic() < deadline:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(PING, b"", reply=inbox)
        answered_by = time.monotonic() + 1.0
        while len(found) < expect and time.monotonic() < answered_by:
            try:
                msg = await sub.next_msg(timeout=max(0.05, answered_by - time.monotonic()))
            except nats.errors.TimeoutError:
                break
            server = json.loads(msg.data).get("server", {})
            found[server["id"]] = server.get("name", server["id"])
        await sub.unsubscribe()
    return found


async def reload_all(url: str, expect: int | None, timeout_s: float) -> list[str]:
    """Reload every node; returns the problems (empty: all reloaded)."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    want = expect or len(servers)
    nc = await nats.connect(
        servers=servers, name="relaybus-nats-reload", connect_timeout=5, max_reconnect_attempts=3
    )
    problems = []
    try:
        nodes = await discover(nc, want, timeout_s)
        if len(nodes) < want:
            problems.append(
                f"only {len(nodes)} of {want} nodes answered ({', '.join(sorted(nodes.values()))})"
            )
        for server_id, name in sorted(nodes.items(), key=lambda kv: kv[1]):
            try:
                reply = await nc.request(RELOAD.format(id=server_id), b"", timeout=timeout_s)
            except nats.errors.Error as exc:
                problems.append(f"{name}: no answer to the reload request ({exc!r})")
                continue
            error = json.loads(reply.data).get("error")
            if error:
                problems.append(f"{name}: {error.get('description', error)}")
            else:
                print(f"{name}: configuration reloaded")
    finally:
        await nc.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expect", type=int, default=None, help="nodes that must answer")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    args = parser.parse_args(argv)
    url = os.environ.get("NATS_SYSTEM_URL", "")
    if not url:
        print("NATS_SYSTEM_URL is not set (the system user's URLs)", file=sys.stderr)
        return 2
    try:
        problems = asyncio.run(reload_all(url, args.expect, args.timeout))
    except (OSError, nats.errors.Error) as exc:
        problems = [f"cannot reach the nodes as the system user: {exc!r}"]
    for problem in problems:
        print(f"nats reload: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
