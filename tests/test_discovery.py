"""The identity, ledger and memory services are NATS micro services: any NATS client finds them
with `$SRV.PING` / `$SRV.INFO` / `$SRV.STATS`, on the subjects clients already use."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from relaybus.bus import Bus, Settings, default_topology, ensure, rpc
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import LedgerError

from .conftest import service_process, wait_for, wait_service

SERVICES = ("relaybus-identity", "relaybus-ledger", "relaybus-memory")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_values(embedder="lexical")


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Bus]:
    """The three services as real processes, each answering its ping."""
    with (
        service_process(settings, "identity"),
        service_process(settings, "ledger"),
        service_process(settings, "memory"),
    ):
        async with Bus(settings, name="test") as bus:
            await ensure(bus, default_topology(bus.subjects))
            for name in ("identity", "ledger", "memory"):
                await wait_service(bus, name, 60)
            yield bus


@pytest.fixture
async def plain(settings: Settings) -> AsyncIterator[NATS]:
    """A bare nats-py connection: what an operator's tooling (`nats micro …`) sees."""
    nc = await nats.connect(settings.nats_url, connect_timeout=5)
    yield nc
    await nc.drain()


async def ask_all(nc: NATS, subject: str, prefix: str, expect: int) -> list[dict[str, Any]]:
    """Every reply to one `$SRV` request from this test's services (the server is shared)."""
    replies: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        body = json.loads(msg.data)
        if body.get("metadata", {}).get("prefix") == prefix:
            replies.append(body)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, b"", reply=inbox)
    await wait_for(lambda: len(replies) >= expect, timeout_s=10, what=f"{expect} on {subject}")
    await asyncio.sleep(0.2)  # any further (unexpected) instance answers too
    await sub.unsubscribe()
    return replies


async def test_ping_finds_the_three_services(running: Bus, plain: NATS, settings: Settings) -> None:
    pongs = await ask_all(plain, "$SRV.PING", settings.prefix, 3)
    assert sorted(p["name"] for p in pongs) == sorted(SERVICES)
    assert {p["type"] for p in pongs} == {"io.nats.micro.v1.ping_response"}
    assert {p["version"] for p in pongs} == {importlib.metadata.version("relaybus")}


async def test_info_lists_every_operation_on_its_client_subject_with_schemas(
    running: Bus, plain: NATS, settings: Settings
) -> None:
    p = settings.prefix
    (ledger,) = await ask_all(plain, "$SRV.INFO.relaybus-ledger", p, 1)
    endpoints = {e["name"]: e for e in ledger["endpoints"]}
    assert set(endpoints) == {
        *("hold", "capture", "void", "cap", "refund", "budget", "limit", "transfer", "tick"),
        *("balance", "holds", "levels", "statement", "run_cost", "ping"),
    }
    for name, endpoint in endpoints.items():
        assert endpoint["subject"] == f"{p}.svc.ledger.{name}"
        assert endpoint["queue_group"] == "ledger"
        assert json.loads(endpoint["metadata"]["response_schema"])["$ref"] == "#/$defs/Reply"
    hold = json.loads(endpoints["hold"]["metadata"]["request_schema"])["$defs"]["Hold"]
    assert set(hold["required"]) == {"id", "payer", "payee"}  # `kind` may be left out
    assert hold["additionalProperties"] is False  # unknown fields are refused
    assert "transfer" not in hold["properties"]

    (identity,) = await ask_all(plain, "$SRV.INFO.relaybus-identity", p, 1)
    subjects = {e["name"]: e["subject"] for e in identity["endpoints"]}
    assert subjects["stamp"] == f"{p}.svc.identity.stamp.*"
    assert subjects["root"] == f"{p}.svc.identity.root"
    root = json.loads(
        next(e for e in identity["endpoints"] if e["name"] == "root")["metadata"]["request_schema"]
    )
    assert {"user", "token", "run_id", "agent"} <= set(root["$defs"]["RootRequest"]["required"])

    (memory,) = await ask_all(plain, "$SRV.INFO.relaybus-memory", p, 1)
    subjects = {e["name"]: e["subject"] for e in memory["endpoints"]}
    assert subjects["recall"] == f"{p}.svc.memory.recall"
    assert subjects["admin_gc"] == f"{p}.svc.memory.admin_gc"
    assert all(e["queue_group"] == "memory" for e in memory["endpoints"])
    assert all("request_schema" in e["metadata"] for e in memory["endpoints"])


async def test_stats_count_requests_made_through_the_client(
    running: Bus, plain: NATS, settings: Settings
) -> None:
    # Given a query and a refused write, both sent as every relaybus client sends them
    await LedgerClient(running).query("balance")
    with pytest.raises(LedgerError, match="missing required field `payee`"):
        await rpc.call(running, f"{settings.prefix}.svc.ledger.hold", {"id": "x", "payer": "u"})
    # When an operator asks for the ledger's stats
    (stats,) = await ask_all(plain, "$SRV.STATS.relaybus-ledger", settings.prefix, 1)
    # Then each endpoint counted its own request, and the refusal as a refusal
    endpoints = {e["name"]: e for e in stats["endpoints"]}
    assert endpoints["balance"]["num_requests"] == 1
    assert endpoints["balance"]["data"] == {"refusals": 0, "unanswered": 0}
    assert endpoints["hold"]["num_requests"] == 1
    assert endpoints["hold"]["data"] == {"refusals": 1, "unanswered": 0}
    assert endpoints["capture"]["num_requests"] == 0
    # and an operation no endpoint names is still refused by name, not left unanswered
    with pytest.raises(LedgerError, match="unknown ledger operation 'steal'"):
        await rpc.call(running, f"{settings.prefix}.svc.ledger.steal", {})
    everyone = await ask_all(plain, "$SRV.STATS", settings.prefix, 3)
    assert sorted(s["name"] for s in everyone) == sorted(SERVICES)
