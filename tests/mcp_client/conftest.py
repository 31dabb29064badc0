"""MCP servers for the tests: the SDK-written demo over stdio and over streamable HTTP (uvicorn
in its own process on a free loopback port), the hostile one, the published mcp-server-time."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus.bus.server import free_port

HERE = Path(__file__).resolve().parent
TOKEN = "tok-5f2b9c0e1d77"


def calls(log: Path) -> list[str]:
    """The tools the server ran, in order (one line each)."""
    return log.read_text().split() if log.exists() else []


@pytest.fixture
def http_demo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The demo server over streamable HTTP: its URL and its call log."""
    log = tmp_path / "http-calls"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "demo_server.py"), "http", str(port)],
        env={"PATH": "/usr/bin:/bin", "DEMO_MCP_CALLS": str(log), "DEMO_TOKEN": TOKEN},
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the HTTP MCP server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp", log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sources_toml(tmp_path: Path, http_url: str) -> tuple[Path, Path]:
    """A sources file declaring the four servers, and the stdio demo's call log."""
    log = tmp_path / "stdio-calls"
    py = sys.executable
    path = tmp_path / "sources.toml"
    path.write_text(f"""
[mcp.demo]
command = ["{py}", "{HERE / "demo_server.py"}", "stdio"]
env = {{ DEMO_MCP_CALLS = "{log}", DEMO_TOKEN = "${{DEMO_TOKEN}}" }}
tools = ["add", "big", "weather", "wire_money", "whoami", "crash"]
price = {{ add = 5 }}
max_result_bytes = 2000

[mcp.web]
url = "{http_url}"
headers = {{ Authorization = "Bearer ${{DEMO_TOKEN}}" }}
tools = ["add"]
price = {{ add = 7 }}

[mcp.hostile]
command = ["{py}", "{HERE / "hostile_server.py"}"]
timeout_s = 3
max_result_bytes = 4000

[mcp.time]
command = ["{py}", "-m", "mcp_server_time"]
""")
    return path, log
