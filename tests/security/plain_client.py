"""A client written with plain nats-py and nothing of relaybus: what a team writes in any
language from docs/wire.md. It publishes a task, follows the run's events until it ends, and
prints one JSON object: the PubAck, every event it saw, and the modules it imported.

    python plain_client.py URL AGENT RUN_ID USER TOKEN PAYLOAD_JSON [WAIT_S]
"""

from __future__ import annotations

import asyncio
import json
import sys

import nats

END = {"completed", "failed", "cancelled"}


async def main(
    url: str, agent: str, run_id: str, user: str, token: str, payload: str, wait_s: str = "60"
) -> None:
    nc = await nats.connect(url, inbox_prefix="_INBOX_client")  # the `client` user's inboxes
    js = nc.jetstream()
    events: list[dict[str, object]] = []
    ended = asyncio.Event()

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        event = json.loads(msg.data)
        events.append({"subject": msg.subject, **event})
        if event["kind"] in END or event["kind"] == "denied":
            ended.set()

    # every event of the run, stored ones first: an ordered consumer on relay.event.<run>.>
    sub = await js.subscribe(f"relay.event.{run_id}.>", cb=on_event, ordered_consumer=True)
    headers = {"Relay-User": user, "Relay-Run": run_id, "Nats-Msg-Id": f"plain-{run_id}"}
    if token:
        headers["Relay-Token"] = token
    ack = await js.publish(f"relay.task.{agent}", payload.encode(), headers=headers)
    try:
        await asyncio.wait_for(ended.wait(), float(wait_s))
    except TimeoutError:
        pass
    await sub.unsubscribe()
    await nc.close()
    imported = sorted(m for m in sys.modules if m.split(".")[0] == "relaybus")
    print(
        json.dumps(
            {
                "ack": {"stream": ack.stream, "seq": ack.seq},
                "events": events,
                "relaybus_modules": imported,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:8]))
