"""The memory CLI with identity on: tokens, memory/read and memory/write scopes, tenant walls."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relaybus.bus import Bus, Settings, default_topology, ensure
from relaybus.services.identity.client import IdentityClient

from ..conftest import ROOT, child_env, service_process, wait_service


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_values(identity=True, embedder="lexical")


@pytest.fixture
async def tokens(settings: Settings) -> AsyncIterator[dict[str, str]]:
    with service_process(settings, "identity"), service_process(settings, "memory"):
        async with Bus(settings, name="test") as bus:
            await ensure(bus, default_topology(bus.subjects))
            await wait_service(bus, "identity")
            await wait_service(bus, "memory", 60)
            client = IdentityClient(bus)
            await client.add_user("alice", ["memory/read", "memory/write"], [])
            await client.add_user("carol", ["memory/read"], [])
            yield {u: (await client.issue_token(u))["token"] for u in ("alice", "carol")}


def memory_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "memory", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(settings),
        timeout=60,
    )


async def test_the_cli_acts_for_a_user_only_with_their_token_and_scopes(
    settings: Settings, tokens: dict[str, str], tmp_path: Path
) -> None:
    doc = tmp_path / "policy.md"
    doc.write_text("# Parking\n\nOnly electric cars may park in the north garage.\n")
    ok = memory_cli(
        settings, "ingest", str(doc), "--collection", "hb", "--as", "alice",
        "--token", tokens["alice"], "--json",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["added"] == 1

    found = memory_cli(
        settings, "search", "parking garage", "--as", "alice", "--token", tokens["alice"], "--json"
    )
    assert found.returncode == 0, found.stderr
    assert "north garage" in json.loads(found.stdout)[0]["text"]

    # carol may read, but only her own tenant; she may not write
    theirs = memory_cli(
        settings, "search", "parking garage", "--as", "carol", "--token", tokens["carol"], "--json"
    )
    assert theirs.returncode == 0 and json.loads(theirs.stdout) == []
    refused = memory_cli(
        settings, "ingest", str(doc), "--collection", "hb", "--as", "carol",
        "--token", tokens["carol"],
    )  # fmt: skip
    assert refused.returncode != 0 and "does not hold memory/write" in refused.stderr

    # someone else's token, or none, is refused
    stolen = memory_cli(
        settings, "search", "parking", "--as", "alice", "--token", tokens["carol"], "--json"
    )
    assert stolen.returncode != 0 and "could not be authenticated" in stolen.stderr
    anonymous = memory_cli(settings, "search", "parking", "--as", "alice", "--json")
    assert anonymous.returncode != 0 and "delegation chain" in anonymous.stderr
