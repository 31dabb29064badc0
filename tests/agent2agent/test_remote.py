"""A relaybus agent calls another vendor's A2A agent as a tool: gated, charged, journaled (a
resume replays the answer without calling again), with the run's delegation chain carried in the
extension; a remote answering too much or garbage fails the call with a clear error.

(This directory is not named `a2a`: the test agents' processes have tests/ on their path, where
a folder `a2a` would hide the a2a-sdk package.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from relaybus.agents.a2a.extension import DELEGATION_URI
from relaybus.bus import RunFailed
from relaybus.services.identity.client import read_audit

from .conftest import A2aStack
from .vendor import vendor_server

PRICE = 700


def sources(tmp_path: Path, base: str) -> Path:
    path = tmp_path / "sources.toml"
    path.write_text(
        "\n".join(
            f'[a2a.{name}]\nurl = "{base}/{name}"\nprice = {PRICE}\nmax_bytes = 65536\n'
            'headers = { "X-Vendor-Key" = "${VENDOR_KEY}" }\n'
            for name in ("quoter", "huge", "garbage")
        )
    )
    return path


async def test_an_agent_calls_a_remote_a2a_agent_as_a_charged_journaled_tool(
    a2a_stack: A2aStack, tmp_path: Path
) -> None:
    async with vendor_server() as (base, seen):
        a2a_stack.start_agent(
            "a2a_agents:Delegator",
            RELAYBUS_LEDGER="1",
            RELAYBUS_DATA_SOURCES=str(sources(tmp_path, base)),
            VENDOR_KEY="vendor-secret-1",
        )
        async with a2a_stack.client("alice") as c:
            # Given a run that asks the quoter, then waits for signal "go"
            run = await c.submit(
                "delegator", {"remote": "quoter", "ask": {"sku": "w-1"}, "wait": True}
            )
            for _ in range(200):  # bounded: the call is made within seconds
                record = await run.record()
                if record.pending_signals():
                    break
                await asyncio.sleep(0.1)
            assert record.pending_signals() == ["go"], record
            assert seen.calls == 1
            # When it resumes, the handler replays: the answer comes from the journal
            await run.signal("go", True)
            result = await run.result(timeout_s=60)
            record = await run.record()
    assert result["answer"]["state"] == "completed"
    assert result["answer"]["data"] == [{"quote": 42.0, "asked": [{"sku": "w-1"}]}]
    assert seen.calls == 1  # not called again on the replay
    assert record.cost == PRICE  # charged once, by the ledger
    # the chain travelled in the extension, and the extension was named in the header
    (carried,) = [m[DELEGATION_URI] for m in seen.metadata]
    assert carried["principal"] == "user:alice" and carried["run_id"] == run.run_id
    assert carried["path"] == ["user:alice", "agent:delegator"]
    assert len(carried["links"]) == 1 and carried["links"][0]["signature"]
    assert seen.extension_headers == [DELEGATION_URI]
    assert "vendor-secret-1" not in json.dumps(result)


async def test_a_remote_answering_too_much_or_garbage_or_out_of_scope_fails_clearly(
    a2a_stack: A2aStack, tmp_path: Path
) -> None:
    async with vendor_server() as (base, seen):
        a2a_stack.start_agent(
            "a2a_agents:Delegator",
            RELAYBUS_LEDGER="1",
            RELAYBUS_DATA_SOURCES=str(sources(tmp_path, base)),
            VENDOR_KEY="vendor-secret-1",
        )
        async with a2a_stack.client("alice") as c:
            huge = await c.submit("delegator", {"remote": "huge", "ask": {}})
            garbage = await c.submit("delegator", {"remote": "garbage", "ask": {}})
            # a run whose root link holds only a2a/huge may not call the quoter
            unscoped = await c.submit(
                "delegator", {"remote": "quoter", "ask": {}}, scopes=["a2a/huge"]
            )
            failures = {}
            for name, run in (("huge", huge), ("garbage", garbage), ("unscoped", unscoped)):
                try:
                    await run.result(timeout_s=60)
                except RunFailed as exc:
                    failures[name] = exc.info
    assert failures["unscoped"].type == "PermissionDenied", failures["unscoped"]
    assert "a2a/quoter" in failures["unscoped"].message
    assert seen.calls == 0  # refused by the gate before the call
    assert failures["huge"].type == "RemoteAgentRefused"
    assert "a2a.huge: its answer is over 65536 bytes" in failures["huge"].message
    assert failures["garbage"].type == "RemoteAgentRefused"
    assert "a2a.garbage: its answer is not a valid A2A answer" in failures["garbage"].message


async def test_a_relaybus_agent_calls_a_relaybus_a2a_server_which_records_the_chain(
    a2a_stack: A2aStack, tmp_path: Path
) -> None:
    # Given the echo agent served over A2A, and the delegator told to call it with bob's token
    path = tmp_path / "sources.toml"
    path.write_text(
        f'[a2a.echo]\nurl = "{a2a_stack.agent_url("echo")}"\nprice = {PRICE}\n'
        'headers = { Authorization = "Bearer ${ECHO_TOKEN}" }\n'
    )
    a2a_stack.start_agent("a2a_agents:Echo")
    a2a_stack.start_agent(
        "a2a_agents:Delegator",
        RELAYBUS_LEDGER="1",
        RELAYBUS_DATA_SOURCES=str(path),
        ECHO_TOKEN=a2a_stack.tokens["bob"],
    )
    async with a2a_stack.client("alice") as c:
        run = await c.submit("delegator", {"remote": "echo", "ask": {"q": "hello"}})
        result = await run.result(timeout_s=60)
    # Then the remote run is bob's (the token decides), and it records alice's chain
    assert result["answer"]["state"] == "completed"
    assert result["answer"]["data"] == [{"echo": {"q": "hello"}}]
    audited = await read_audit(a2a_stack.bus, "bob", decision="allow")
    (sent,) = [r for r in audited if r.action == "a2a/send"]
    assert sent.detail["delegated_by"] == ["user:alice", "agent:delegator"]
    assert a2a_stack.tokens["bob"] not in json.dumps(result)


async def test_a_card_naming_another_origin_gets_neither_our_headers_nor_the_chain() -> None:
    """The configured URL is the only place a remote agent's secret header and the run's
    delegation chain go: a card that routes calls elsewhere is refused before anything is sent."""
    import pytest

    from relaybus.agents.a2a.remote import Ask, RemoteAgent, RemoteAgentRefused
    from relaybus.agents.tools.config import A2aSource

    async with vendor_server() as (base, seen):
        source = A2aSource(url=f"{base}/elsewhere", headers={"Authorization": "Bearer s3cret"})
        remote = RemoteAgent("elsewhere", source)
        try:
            with pytest.raises(
                RemoteAgentRefused, match="its card sends calls to http://localhost"
            ):
                await remote.ask(Ask(text="quote?"), {}, message_id="m1")
        finally:
            await remote.close()
    assert seen.calls == 0 and seen.extension_headers == []
