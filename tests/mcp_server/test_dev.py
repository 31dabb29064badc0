"""`relaybus mcp serve` on a dev stack (identity off): calls act as user:dev, on loopback only."""

from __future__ import annotations

import subprocess

from mcp import Client

from relaybus.bus import Settings
from relaybus.bus.runtime import EXIT_ERROR
from relaybus.testing import AgentEnvironment

from ..conftest import ROOT, child_env
from ..mcp_server_agents import Greeter
from .conftest import SERVE, serving


def test_without_identity_http_serves_only_on_loopback(settings: Settings) -> None:
    dev = settings.with_values(identity=False)
    out = subprocess.run(
        [*SERVE, "--agent", "mcp_greet", "--http", "0.0.0.0:0"],
        env=child_env(dev),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == EXIT_ERROR
    assert "identity is off" in out.stderr and "serve on loopback" in out.stderr


async def test_without_identity_a_loopback_call_needs_no_token_and_acts_as_dev() -> None:
    async with AgentEnvironment([Greeter]) as env:
        async with serving(env.settings, "--agent", "mcp_greet") as url, Client(url) as client:
            done = await client.call_tool("mcp_greet", {"name": "Linus"})
        assert not done.is_error, done.content
        assert done.structured_content["result"] == {"greeting": "hello Linus"}
        record = await env.client.run(done.structured_content["run_id"]).record()
        assert record.submitted_by == "user:dev"
