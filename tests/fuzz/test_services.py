"""Fuzzing the service request decoders: every hostile request to the identity, ledger and
memory services is answered — with an error reply naming a relaybus error when it is refused —
and the service keeps answering good requests afterwards (it neither dies nor wedges)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from relaybus.bus import Bus, RelayError, Settings, new_id
from relaybus.bus.errors import error_class
from relaybus.bus.kv import Bucket
from relaybus.bus.rpc import Reply
from relaybus.memory.client import MemoryClient
from relaybus.memory.edge import EdgeStore
from relaybus.memory.embed import LexicalEmbedder
from relaybus.memory.messages import Caller
from relaybus.memory.service import MemoryService
from relaybus.memory.sessions import Sessions
from relaybus.services.identity.client import IdentityClient
from relaybus.services.ledger.client import LedgerClient

from ..conftest import service_process, wait_service
from .hostile import DEEP_JSON, DEEP_JSON_OBJECT, IO, json_values, msgpack_values

SERVICE_IO = settings(
    IO, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Raw bodies no decoder should choke on.
RAW = [
    b"",
    b"null",
    b"[]",
    b'"x"',
    b"1e400",
    b"-0",
    b"\xff\xfe",
    b'{"a": 1, "a": {}}',
    b"{" * 10,
    b"\x00" * 8,
    DEEP_JSON,
    DEEP_JSON_OBJECT,
    b'{"kind": ' + DEEP_JSON + b"}",
]
hostile_strings = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "*", ">", "a.b", "a b", "a.*", "..", "x" * 300, "user:", "agent:"]),
)
hostile_json = st.one_of(json_values, hostile_strings, st.integers(), st.floats(allow_nan=False))


def body_like(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    """A JSON object shaped like a request, every field optional and possibly of a wrong type."""
    return st.fixed_dictionaries(
        {},
        optional={name: st.one_of(strategy, hostile_json) for name, strategy in fields.items()},
    ).map(msgspec.json.encode)


def bodies(shapes: list[st.SearchStrategy[bytes]]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(RAW),
        st.binary(max_size=200),
        json_values.map(msgspec.json.encode),
        msgpack_values.map(msgspec.msgpack.encode),
        *shapes,
    )


async def answer(bus: Bus, subject: str, data: bytes) -> Reply:
    """The service's reply; a request left unanswered fails the test (ConnectionFailed)."""
    raw = await bus.request(subject, data, timeout_s=3.0)
    reply = msgspec.json.decode(raw, type=Reply)
    if not reply.ok:
        assert reply.error is not None, "a refusal must carry its error"
        found = error_class(reply.error.type)  # a registered RelayError of the layer's own
        assert found is not RelayError or reply.error.type == "RelayError", reply.error
        assert reply.error.message.strip(), reply.error
    return reply


def alive(proc: subprocess.Popen[bytes]) -> None:
    assert proc.poll() is None, f"the service exited with {proc.returncode}"


# -- ledger, as a real `relaybus service ledger` process -----------------------------------------

LEDGER_OPS = ["hold", "capture", "void", "refund", "budget", "transfer", "tick", "limit"]
LEDGER_QUERIES = ["balance", "holds", "levels", "statement", "ping"]
amounts = st.one_of(st.integers(), st.floats(), st.sampled_from([0, -1, 2**53, 2**63, 2**64]))
clock = st.one_of(st.floats(allow_nan=False), st.sampled_from([1e300, 1e18, -1.0, 0.0]))
op_shape = st.builds(
    lambda kind, rest: msgspec.json.encode({"kind": kind, **msgspec.json.decode(rest)}),
    st.sampled_from(LEDGER_OPS),
    body_like(
        {
            "id": st.text(max_size=10),
            "at": clock,
            "amount": amounts,
            "currency": st.sampled_from(["USD", "EUR", ""]),
            "payer": hostile_strings,
            "payee": hostile_strings,
            "transfer": hostile_strings,
            "levels": st.lists(hostile_strings, max_size=3),
            "ttl_s": clock,
            "tokens": amounts,
            "tags": st.dictionaries(st.text(max_size=5), hostile_json, max_size=3),
            "budget": st.fixed_dictionaries(
                {"level": hostile_strings},
                optional={
                    "limit": amounts,
                    "period": st.sampled_from(["", "daily", "monthly", "weekly"]),
                    "max_steps": amounts,
                },
            ),
            "rate": hostile_strings,
            "limit": st.fixed_dictionaries(
                {"key": hostile_strings}, optional={"rpm": amounts, "tpm": amounts}
            ),
        }
    ),
)
query_shape = body_like(
    {
        "account": hostile_strings,
        "level": hostile_strings,
        "user": hostile_strings,
        "period": hostile_strings,
    }
)


@pytest.fixture
def ledger_proc(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    with service_process(settings, "ledger") as proc:
        yield proc


@pytest.fixture
async def ledger(bus: Bus, ledger_proc: subprocess.Popen[bytes]) -> LedgerClient:
    await wait_service(bus, "ledger")
    return LedgerClient(bus)


@SERVICE_IO
@given(st.sampled_from([*LEDGER_OPS, *LEDGER_QUERIES, "nope"]), bodies([op_shape, query_shape]))
@example(
    "hold", b'{"kind": "hold", "id": "far", "at": 1e300, "amount": 1, "payer": "a", "payee": "b"}'
)
@example("tick", b'{"kind": "tick", "id": "future", "at": 1e18}')
@example(
    "hold",
    b'{"kind": "budget", "id": "p", "budget": {"level": "user:z", "period": "daily"}}',
)
@example("balance", b'{"account": {"a": 1}}')
@example("balance", b"[1, 2]")
@example("levels", b'{"level": 5}')
@example("statement", b'{"user": "u", "period": 2026}')
@example("holds", DEEP_JSON)
@example("hold", DEEP_JSON_OBJECT)
async def test_ledger_answers_every_hostile_request_and_keeps_working(
    bus: Bus, ledger: LedgerClient, ledger_proc: subprocess.Popen[bytes], op: str, data: bytes
) -> None:
    await answer(bus, bus.subjects.service("ledger", op), data)
    alive(ledger_proc)
    # Then a good hold (on accounts of its own) is still decided: the clock was not poisoned.
    payer = f"user:good-{new_id()}"
    held = await ledger.hold(new_id(), payer, "tool:fuzz", 5, [f"run:{new_id()}"])
    assert held["amount"] == 5
    balance = await ledger.query("balance", account=payer)
    assert balance["balance"] == 0


# -- identity, as a real `relaybus service identity` process -------------------------------------

IDENTITY_OPS = [
    "agent_add",
    "agent_list",
    "user_add",
    "role_add",
    "token",
    "revoke",
    "root",
    "authenticate",
]
hex_keys = st.one_of(
    st.just(bytes(SigningKey.generate().verify_key).hex()),
    st.sampled_from(["", "zz", "0" * 63, "0" * 64, "ab" * 33, "é" * 32]),
    st.text(max_size=70),
)
scope_texts = st.lists(
    st.one_of(st.sampled_from(["search", "email/send:x=1", "/bad", "a//b", ":", "a:b"]), st.text()),
    max_size=3,
)
identity_shapes = [
    body_like(
        {
            "name": hostile_strings,
            "public_key": hex_keys,
            "scopes": scope_texts,
            "handoff_to": st.lists(hostile_strings, max_size=2),
            "nkey": hostile_strings,
        }
    ),
    body_like({"id": hostile_strings, "scopes": scope_texts, "roles": st.lists(hostile_strings)}),
    body_like({"user": hostile_strings, "token": hostile_strings}),
    body_like(
        {
            "kind": st.sampled_from(["agent", "user", "token", "link", "nope"]),
            "id": hostile_strings,
            "reason": st.text(max_size=20),
        }
    ),
    body_like(
        {
            "user": hostile_strings,
            "token": st.sampled_from(["rb_a_b_c", "rb__", "rb_alice_x_y_z"]),
            "run_id": hostile_strings,
            "agent": hostile_strings,
            "scopes": scope_texts,
            "ttl_s": clock,
        }
    ),
    body_like(
        {
            "link": st.fixed_dictionaries(
                {"payload": st.binary(max_size=40), "signature": st.binary(max_size=64)}
            ).map(msgspec.to_builtins),
            "chain": st.lists(
                st.fixed_dictionaries(
                    {"payload": st.binary(max_size=40), "signature": st.binary(max_size=64)}
                ).map(msgspec.to_builtins),
                max_size=2,
            ),
        }
    ),
]


@pytest.fixture
def identity_proc(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    with service_process(settings, "identity") as proc:
        yield proc


@pytest.fixture
async def identity(bus: Bus, identity_proc: subprocess.Popen[bytes]) -> IdentityClient:
    client = IdentityClient(bus)
    for _ in range(100):  # bounded: the process is starting (no ping op in identity)
        try:
            await client.call("pubkey", {}, timeout_s=0.5)
            return client
        except RelayError:
            continue
    raise AssertionError("identity did not answer")


@SERVICE_IO
@given(
    st.sampled_from([*IDENTITY_OPS, "stamp.research", "nope"]),
    bodies(identity_shapes),
)
@example("agent_add", b'{"name": "a", "public_key": "zz"}')  # regression: ValueError from fromhex
@example("agent_add", b'{"name": "a", "public_key": "00"}')  # a 1-byte key
@example("agent_add", b'{"name": "a.*", "public_key": "' + b"0" * 64 + b'"}')
@example("revoke", b'{"kind": "agent", "id": "a.*"}')
@example("user_add", b'{"id": "a b"}')
@example("token", b'{"user": ">"}')
@example("root", b'{"user": "*", "token": "rb_*_x_y", "run_id": "r", "agent": "a"}')
@example("stamp.research", b'{"link": {"payload": "", "signature": ""}, "chain": []}')
@example("authenticate", b'{"token": "rb_*_x_y"}')
@example("agent_add", DEEP_JSON_OBJECT)
async def test_identity_answers_every_hostile_request_and_keeps_working(
    bus: Bus,
    identity: IdentityClient,
    identity_proc: subprocess.Popen[bytes],
    op: str,
    data: bytes,
) -> None:
    await answer(bus, f"{bus.subjects.prefix}.svc.identity.{op}", data)
    alive(identity_proc)
    assert (await identity.call("pubkey", {}))["public_key"]


# -- memory, its service object answering on the real bus ----------------------------------------

MEMORY_OPS = ["remember", "recall", "forget", "history", "ingest", "search_docs", "gc", "session"]
callers = st.fixed_dictionaries(
    {"run_id": hostile_strings, "agent": hostile_strings},
    optional={"principal": hostile_strings, "chain": st.just([])},
)
memory_shapes = [
    body_like(
        {
            "caller": callers,
            "text": st.text(max_size=60),
            "query": st.text(max_size=20),
            "kind": hostile_strings,
            "key": hostile_strings,
            "metadata": st.dictionaries(hostile_strings, hostile_json, max_size=2),
            "k": amounts,
            "as_of": clock,
            "ids": st.lists(hostile_strings, max_size=2),
            "collection": hostile_strings,
            "source": hostile_strings,
        }
    ),
    body_like(
        {
            "caller": callers,
            "session": hostile_strings,
            "action": st.sampled_from(["get", "put", "append", "window", "close", "nope"]),
            "state": st.dictionaries(hostile_strings, hostile_json, max_size=2),
            "turn": st.fixed_dictionaries({"role": hostile_strings, "text": st.text(max_size=20)}),
            "last": amounts,
        }
    ),
    body_like(
        {
            "dry_run": st.booleans(),
            "retention_s": clock,
            "cap": amounts,
            "half_life_s": clock,
            "duplicate_score": clock,
            "ttl_s": st.dictionaries(hostile_strings, clock, max_size=2),
        }
    ),
]


@pytest.fixture
async def memory(bus: Bus, tmp_path: Path) -> AsyncIterator[MemoryService]:
    sessions = Sessions(await Bucket.open(bus, bus.subjects.bucket("sessions")))
    service = MemoryService(EdgeStore(tmp_path / "memory"), LexicalEmbedder(), sessions=sessions)
    await service.start()
    sub = await bus.serve(f"{bus.subjects.prefix}.svc.memory.*", service.handle)
    yield service
    await sub.unsubscribe()
    await service.store.close()


@SERVICE_IO
@given(st.sampled_from([*MEMORY_OPS, "nope"]), bodies(memory_shapes))
@example(
    "session",
    b'{"caller": {"run_id": "r", "agent": "a", "principal": "user:a"}, "session": "s.*",'
    b' "action": "get"}',
)
@example(
    "session",
    b'{"caller": {"run_id": "r", "agent": "a", "principal": "a b"}, "session": "s",'
    b' "action": "put", "state": {"k": "v"}}',
)
@example(
    "recall",
    b'{"caller": {"run_id": "r", "agent": "a", "principal": "a"}, "query": "q", "k": 1e300}',
)
@example("remember", DEEP_JSON_OBJECT)
async def test_memory_answers_every_hostile_request_and_keeps_working(
    bus: Bus, memory: MemoryService, op: str, data: bytes
) -> None:
    await answer(bus, bus.subjects.service("memory", op), data)
    # Then a good write and read of a tenant of its own still work.
    tenant = f"user:good-{new_id()}"
    client = MemoryClient(bus, Caller(run_id="R", agent="fuzz", principal=tenant))
    await client.session_put("s", {"k": "v"})
    assert (await client.session_get("s"))["state"] == {"k": "v"}
