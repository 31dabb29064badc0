"""The HTTP API tool against a real HTTP server on loopback, and both data tools inside real
agent processes: retries, the breaker, truncation, secrets, tenant scoping from the run."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from relaybus.agents.errors import DataRefused
from relaybus.agents.submit import submit
from relaybus.agents.tools import DataTools
from relaybus.agents.tools.demo import build_pricing_db
from relaybus.bus import Bus, Settings, UpstreamFailed
from relaybus.bus.feed import EventFeed

from ..conftest import ROOT, Spawn, child_env

SECRET = "sk-test-5f2b9c0e1d"


class Api(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        Api.hits[path] = Api.hits.get(path, 0) + 1
        if path == "/flaky":
            self._send(500, b'{"error": "database on fire"}')
        elif path == "/big":
            self._send(200, b"x" * 100_000)
        elif path.startswith("/customers/"):
            if path == "/customers/missing":
                self._send(404, b'{"error": "no such customer"}')
                return
            # a careless API that echoes the credential it was sent
            body = {"id": path.rsplit("/", 1)[1], "seen_auth": self.headers.get("Authorization")}
            self._send(200, json.dumps(body).encode())
        else:
            self._send(404, b"{}")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    Api.hits = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def sources(tmp_path: Path, api_url: str) -> Path:
    db = build_pricing_db(tmp_path / "pricing.db")
    path = tmp_path / "sources.toml"
    path.write_text(f"""
[sql.pricing]
url = "sqlite:///{db}"
free_form = true

[sql.pricing.tables.competitor_prices]
columns = ["competitor", "product", "plan", "price_usd"]
tenant_column = "tenant"

[sql.pricing.queries.price_of]
sql = "SELECT competitor, plan, price_usd FROM competitor_prices WHERE product = :product"
params = {{ product = "str" }}

[api.crm]
base_url = "{api_url}"
headers = {{ Authorization = "Bearer ${{CRM_TOKEN}}" }}

[api.crm.endpoints.lookup]
path = "/customers/{{customer_id}}"
params = {{ customer_id = "str" }}

[api.crm.endpoints.flaky]
path = "/flaky"
retries = 3
breaker_failures = 2
breaker_reset_s = 60

[api.crm.endpoints.big]
path = "/big"
max_bytes = 1000
""")
    return path


@pytest.fixture
async def tools(sources: Path) -> DataTools:
    return DataTools.load(sources, {"CRM_TOKEN": SECRET})


async def call(tools: DataTools, name: str, **args: object) -> dict:
    endpoint = tools.apis[0].api.endpoints[name]
    return await tools.apis[0].call(name, endpoint, args)


async def test_a_failing_endpoint_is_retried_then_reported(tools: DataTools) -> None:
    with pytest.raises(UpstreamFailed, match=r"crm.flaky: the API answered 500.*after 3 attempts"):
        await call(tools, "flaky")
    assert Api.hits["/flaky"] == 3
    with pytest.raises(DataRefused, match="answered 404"):
        await call(tools, "lookup", customer_id="missing")
    assert Api.hits["/customers/missing"] == 1  # a 4xx is not retried
    await tools.aclose()


async def test_secrets_are_scrubbed_and_arguments_cannot_escape_the_path(tools: DataTools) -> None:
    found = await call(tools, "lookup", customer_id="c-42")
    assert found["json"] == {"id": "c-42", "seen_auth": "[secret]"}
    assert SECRET not in json.dumps(found)
    with pytest.raises(DataRefused, match=r"customer_id='../../admin' holds a path separator"):
        await call(tools, "lookup", customer_id="../../admin")
    await call(tools, "lookup", customer_id="a?b#c")  # encoded: stays one segment
    assert "/customers/a%3Fb%23c" in Api.hits and "/admin" not in Api.hits
    big = await call(tools, "big")
    assert big["truncated"] and len(big["text"]) == 1000
    assert big["note"] == "response cut at 1000 bytes; ask for less"
    await tools.aclose()


def test_a_missing_secret_or_bad_declaration_is_a_config_error(sources: Path) -> None:
    from relaybus.bus import ConfigError

    with pytest.raises(ConfigError, match=r"header Authorization needs \$\{CRM_TOKEN\}"):
        DataTools.load(sources, {})
    bad = sources.parent / "bad.toml"
    bad.write_text(sources.read_text().replace('path = "/flaky"', 'path = "/flaky/{id}"'))
    with pytest.raises(ConfigError, match=r"path uses \{id\}, which is not among its params"):
        DataTools.load(bad, {"CRM_TOKEN": SECRET})
    bad.write_text(sources.read_text().replace("free_form = true", "free_form = 'yes'"))
    with pytest.raises(ConfigError, match=r"sql.pricing.free_form"):
        DataTools.load(bad, {"CRM_TOKEN": SECRET})
    with pytest.raises(ConfigError, match=r"no data tool 'pricing.nope'"):
        DataTools.load(sources, {"CRM_TOKEN": SECRET})["pricing.nope"]


async def run(bus: Bus, task: dict, user: str = "alice") -> object:
    return await submit(
        bus, "analyst", json.dumps(task).encode(), sender=f"user:{user}", wait=True, timeout_s=40
    )


async def test_agents_query_their_users_rows_and_the_breaker_opens(
    bus: Bus, settings: Settings, sources: Path, spawn: Spawn
) -> None:
    spawn("data_agents:Analyst", RELAYBUS_DATA_SOURCES=str(sources), CRM_TOKEN=SECRET)
    mine = await run(bus, {"product": "widgetpro"}, "bob")
    assert mine.status == "completed", mine.error  # type: ignore[attr-defined]
    assert mine.result["rows"] == [["acme", "team", 45.0]]  # type: ignore[attr-defined]
    sneaky = await run(bus, {"sql": "SELECT competitor FROM competitor_prices WHERE 1=1 OR 1=1"})
    assert {r[0] for r in sneaky.result["rows"]} == {"acme", "globex", "initech"}  # type: ignore[attr-defined]
    refused = await run(bus, {"sql": "DELETE FROM competitor_prices"})
    assert refused.status == "failed" and "only SELECT" in refused.error  # type: ignore[attr-defined]

    # the runtime retries the task; each attempt's call retries the API 3 times; after two
    # failed calls the breaker opens and the API is left alone
    failed = await run(bus, {})
    assert failed.status == "failed" and "breaker is open" in failed.error  # type: ignore[attr-defined]
    assert Api.hits["/flaky"] == 6
    # a new run waits for the breaker to half-open (60 s) instead of hammering the API
    await submit(bus, "analyst", b"{}", sender="user:alice")
    await asyncio.sleep(2.0)
    assert Api.hits["/flaky"] == 6


async def test_a_secret_never_reaches_results_events_or_logs(
    bus: Bus, settings: Settings, sources: Path, tmp_path: Path
) -> None:
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relaybus.cli", "agent", "run", "data_agents:Analyst"],
            env=child_env(
                settings,
                RELAYBUS_DATA_SOURCES=str(sources),
                CRM_TOKEN=SECRET,
                RELAYBUS_LOG_LEVEL="DEBUG",
            ),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stderr=out,
            stdout=out,
        )
        try:
            outcome = await run(bus, {"customer": "c-7"})
            assert outcome.status == "completed"  # type: ignore[attr-defined]
            assert outcome.result["json"]["seen_auth"] == "[secret]"  # type: ignore[attr-defined]
            async with EventFeed(bus, outcome.run_id, replay=True) as feed:  # type: ignore[attr-defined]
                events = []
                while (event := await feed.next(2)) is not None:
                    events.append(event)
            assert events and SECRET not in repr(events)
        finally:
            proc.terminate()
            proc.wait(15)
    assert SECRET not in log.read_text()
