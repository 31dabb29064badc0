"""Every service and agent process starts through `relaybus.cli`: what it imports is paid by each
of them on every start (and by every stack a test or a demo brings up). These keep the heavy
SDKs out of the processes that never use them."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("mcp", "a2a", "sqlalchemy", "uvicorn", "starlette", "qdrant_client")


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_cli_parser_loads_no_sdk_a_command_does_not_use() -> None:
    loaded = imported_after("import relaybus.cli; relaybus.cli.build_parser()")
    assert not {name for name in HEAVY if name in loaded}
    assert "relaybus.agents.mcp_server.server" not in loaded
    assert "relaybus.agents.context" not in loaded  # the agent runtime: only `agent run` needs it


def test_a_service_process_does_not_load_the_agent_runtime() -> None:
    loaded = imported_after(
        "import relaybus.cli; relaybus.cli.build_parser()\n"
        "import relaybus.services.identity.service, relaybus.services.ledger.service"
    )
    assert "relaybus.agents.context" not in loaded
    assert "httpx" not in loaded
    assert not {name for name in HEAVY if name in loaded}


def test_an_agent_process_loads_its_http_client_only_for_a_model_call() -> None:
    loaded = imported_after(
        "import relaybus.cli; relaybus.cli.build_parser()\nimport relaybus.agents.process"
    )
    assert "relaybus.agents.context" in loaded
    assert "httpx" not in loaded
    assert not {name for name in HEAVY if name in loaded}


def test_the_public_names_still_import_from_the_root() -> None:
    loaded = imported_after(
        "from relaybus import Agent, Client, Context, tool\n"
        "from relaybus.memory import MemoryClient\n"
        "from relaybus.agents.llm import LLMClient\n"
        "import relaybus\n"
        "assert relaybus.Agent is Agent and callable(relaybus.submit)"
    )
    assert "relaybus.agents.context" in loaded


def test_a_missing_name_is_an_attribute_error_naming_it() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import relaybus; relaybus.NoSuchName"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "module 'relaybus' has no attribute 'NoSuchName'" in out.stderr
