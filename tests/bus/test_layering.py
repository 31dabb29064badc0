"""The dependency direction, checked by walking every import in the source tree."""

import ast
import os
import subprocess
import sys
from pathlib import Path

from relaybus.bus import Settings
from relaybus.bus.settings import known_names, registered_layers, transport_names

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("bus", "agents", "memory", "services")
# the composition root: the one place that wires service servers, the console and the demo
COMPOSITION_ROOT = {"agents/demo/procs.py", "agents/demo/run.py"}


def imports_of(source: str) -> set[str]:
    """Every absolute import in `source`, as dotted module names."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def layer_of(module: str) -> str | None:
    """`relaybus.memory.client` → `memory`; the public face (`relaybus`, `relaybus.client`,
    `relaybus.testing`) → `relaybus`; anything else → None."""
    parts = module.split(".")
    if parts[0] != "relaybus":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "relaybus"


def problems_of(package: str, rel: str, source: str) -> list[str]:
    problems = []
    for module in sorted(imports_of(source)):
        top = module.split(".")[0]
        layer = layer_of(module)
        if top in LAYERS:
            problems.append(f"{rel}: imports {module}; write relaybus.{module} (one import root)")
        if top == "nats" and package != "bus":
            problems.append(f"{rel}: imports nats outside bus/")
        if layer == "relaybus":
            problems.append(f"{rel}: a layer imports the public face {module}")
        if package == "bus" and layer in ("agents", "memory", "services"):
            problems.append(f"{rel}: bus imports {module}")
        if package in ("memory", "services") and layer == "agents":
            problems.append(f"{rel}: {package} imports the agents runtime ({module})")
        if (
            module.endswith((".service", ".server"))
            and layer == "services"
            and not rel.startswith(module.split(".")[1] + "/" + module.split(".")[2])
            and rel not in COMPOSITION_ROOT
            and not rel.startswith("services/")  # a service process may host another's server
        ):
            problems.append(f"{rel}: imports a service's server internals ({module})")
    return problems


def test_layers_import_downward_only_through_the_one_root() -> None:
    problems = []
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            problems += problems_of(package, path.relative_to(ROOT).as_posix(), path.read_text())
    assert problems == []


def test_the_walker_sees_imports() -> None:
    client = (ROOT / "bus" / "client.py").read_text()
    assert "nats" in imports_of(client)
    assert problems_of("bus", "bus/client.py", client) == []
    assert layer_of("relaybus.memory.client") == "memory" and layer_of("relaybus") == "relaybus"


def test_the_rules_catch_what_they_forbid() -> None:
    source = "import agents\nfrom relaybus.agents import Agent\nimport relaybus.client\n"
    assert len(problems_of("bus", "bus/probe.py", source)) == 3
    internals = "from relaybus.services.ledger.service import LedgerWriter\n"
    assert problems_of("agents", "agents/worker.py", internals) != []


TRANSPORT = {
    "nats_url",
    "home",
    "prefix",
    "nats_server",
    "connect_timeout_s",
    "request_timeout_s",
    "ack_wait_s",
    "max_deliver",
    "max_payload_bytes",
    "stream_replicas",
    "log_level",
    "nats_auth",
    "trace_dir",
    "trace_content",
    "metrics_host",
}


def test_bus_settings_hold_the_transport_only_and_each_layer_owns_its_own() -> None:
    assert set(Settings.model_fields) == TRANSPORT | {"layers"}
    assert transport_names() == TRANSPORT
    for layer in registered_layers():
        assert layer_of(layer.__module__) in ("agents", "memory", "services"), layer


def test_every_layer_registers_its_settings_whatever_a_process_imports() -> None:
    probe = "from relaybus.bus.settings import known_names; print(' '.join(sorted(known_names())))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    names = set(out.stdout.split())
    for name in ("ledger_spike", "identity", "memory_cap", "payments_url", "llm_model", "smtp_url"):
        assert name in names
    assert names == known_names()
