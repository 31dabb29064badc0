"""The identity, ledger and memory services are NATS micro services: any NATS client finds them
with `$SRV.PING` / `$SRV.INFO` / `$SRV.STATS`, on the subjects clients already use."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from relaybus.bus import Bus, NatsServer, Settings, Subjects, default_topology, ensure, rpc
from relaybus.services.identity.messages import AgentRecord
from relaybus.services.identity.natsconfig import authorization_block, nkey_path, write_nkey
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
        *("balance", "holds", "levels", "statement", "run_cost", "ping", "batch"),
    }
    batch = json.loads(endpoints["batch"]["metadata"]["request_schema"])
    assert batch["type"] == "array" and set(batch["items"]["discriminator"]["mapping"]) == {
        "hold",
        "capture",
        "void",
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


@pytest.fixture
def secured(tmp_path: Path, prefix: str) -> Iterator[tuple[NatsServer, Settings]]:
    """A server running the generated authorization block: the operator, the ledger service's
    own user, and one agent on its nkey."""
    home = tmp_path / "home"
    settings = Settings.from_env({}, prefix=prefix, home=home, nats_auth=True)
    agents = [AgentRecord(name="scout", public_key="", nkey=write_nkey(home, "scout"))]
    conf = tmp_path / "auth.conf"
    admins = {"admin": "op-s3cret", "ledger": "ledger-s3cret"}
    conf.write_text(authorization_block(Subjects(prefix), agents, admins))
    with NatsServer(tmp_path / "store", config_file=conf) as server:
        yield server, settings.model_copy(update={"nats_url": server.url})


async def test_operators_discover_services_and_agents_cannot(
    secured: tuple[NatsServer, Settings],
) -> None:
    server, settings = secured
    operator = settings.model_copy(
        update={"nats_url": server.url.replace("nats://", "nats://admin:op-s3cret@")}
    )
    ledger_user = settings.model_copy(
        update={"nats_url": server.url.replace("nats://", "nats://ledger:ledger-s3cret@")}
    )
    async with Bus(operator, name="operator") as bus:
        await ensure(bus, default_topology(bus.subjects))
        with service_process(ledger_user, "ledger"):  # on its own, restricted NATS user
            await wait_service(bus, "ledger", 60)
            # the operator finds the ledger: its user may listen on $SRV and reply
            pong = await bus.nc.request("$SRV.PING.relaybus-ledger", b"", timeout=5)
            assert json.loads(pong.data)["metadata"] == {"prefix": settings.prefix}

            refusals: list[str] = []

            async def on_error(exc: Exception) -> None:
                refusals.append(str(exc))

            agent = await nats.connect(
                server.url,
                nkeys_seed=str(nkey_path(settings.home, "scout")),
                inbox_prefix="_INBOX_scout",
                error_cb=on_error,
                connect_timeout=5,
            )
            try:
                # an agent still reaches its own ledger operations, endpoints and all ...
                reply = await agent.request(
                    f"{settings.prefix}.svc.ledger.run_cost", b'{"run": "R1"}', timeout=5
                )
                assert json.loads(reply.data)["ok"] is True
                # ... but may not ask who serves what, nor what they have handled
                for subject in ("$SRV.PING", "$SRV.INFO.relaybus-ledger", "$SRV.STATS"):
                    with pytest.raises(nats.errors.TimeoutError):
                        await agent.request(subject, b"", timeout=1)
                await wait_for(lambda: len(refusals) >= 3, timeout_s=5, what="3 refusals")
                assert all("permissions violation for publish" in r for r in refusals), refusals
                assert {r.split('"')[1] for r in refusals} == {
                    "$srv.ping",  # nats-py lower-cases the server's error
                    "$srv.info.relaybus-ledger",
                    "$srv.stats",
                }
            finally:
                await agent.close()
