"""One import root: the distribution installs `relaybus` and nothing else, so a user project's own
`agents.py`, `memory.py`, `services.py` and `bus.py`, and the OpenAI Agents SDK's `agents`
package, live beside it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

RELAYBUS = [sys.executable, "-m", "relaybus"]

USER_AGENTS = """
from relaybus import Agent, Context


class Greeter(Agent):
    name = "greeter"

    async def handle(self, ctx: Context, task: dict) -> dict:
        return {"greeting": "hello " + task["name"]}
"""
SHADOW = 'raise SystemExit("relaybus imported the user project\'s {name}.py")\n'


def test_the_wheel_holds_only_the_relaybus_package(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("relaybus-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"relaybus"}, top
    for layer in ("bus", "agents", "memory", "services"):  # every layer, as real files
        assert f"relaybus/{layer}/__init__.py" in names
    assert "relaybus/services/runs/service.py" in names
    assert any(n.startswith("relaybus/agents/console/static/") for n in names)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A user project whose modules take the generic names, and a stack started from it."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "agents.py").write_text(USER_AGENTS)
    for name in ("memory", "services", "bus"):
        (root / f"{name}.py").write_text(SHADOW.format(name=name))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBUS_")}
    env.pop("PYTHONPATH", None)  # the installed relaybus, as a user has it
    env["RELAYBUS_HOME"] = str(tmp_path / "home")
    up = subprocess.run(
        [*RELAYBUS, "up", "--detach", "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    try:
        yield root, env
    finally:
        subprocess.run(
            [*RELAYBUS, "down", "--json"], cwd=root, env=env, capture_output=True, timeout=60
        )


def test_a_project_with_its_own_agents_memory_services_and_bus_modules(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    agent = subprocess.Popen([*RELAYBUS, "agent", "run", "agents:Greeter"], cwd=root, env=env)
    try:
        out = subprocess.run(
            [
                *RELAYBUS,
                "publish",
                "greeter",
                '{"name": "ada"}',
                "--wait",
                "--json",
                "--timeout",
                "60",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["result"] == {"greeting": "hello ada"}
    finally:
        agent.terminate()
        agent.wait(30)


def python_elsewhere(cwd: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` as a user would: outside this repository, with only the installed packages."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )


def test_relaybus_and_the_openai_agents_sdk_import_side_by_side(tmp_path: Path) -> None:
    probe = python_elsewhere(
        tmp_path,
        "import agents, relaybus; print(agents.Agent.__module__, relaybus.Agent.__module__)",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["agents.agent", "relaybus.agents.base"]


def test_the_agent_specs_in_the_readme_and_compose_import_from_the_installed_package(
    tmp_path: Path,
) -> None:
    texts = [
        (ROOT / "README.md").read_text(),
        (ROOT / "compose" / "docker-compose.yml").read_text(),
    ]
    specs = {
        m for text in texts for m in re.findall(r"agent[\"',\s]+run[\"',\s]+([\w.]+):\w+", text)
    }
    ours = sorted(s for s in specs if s.split(".")[0] in ("relaybus", "agents", "bus"))
    assert ours and all(s.startswith("relaybus.") for s in ours), ours
    probe = python_elsewhere(
        tmp_path, "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]", *ours
    )
    assert probe.returncode == 0, probe.stderr


@pytest.mark.parametrize("folder", ["agents", "bus", "memory", "services"])
def test_a_checkout_folder_imported_by_its_own_name_says_what_to_import(folder: str) -> None:
    # Given the checkout itself on the path (python run from the repository's root)
    probe = subprocess.run(
        [sys.executable, "-c", f"import {folder}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    # Then importing the folder as a top-level package fails at once, naming the real one (it
    # used to load a second copy of relaybus's modules, whose settings clashed with the first)
    assert probe.returncode != 0
    assert f"import relaybus.{folder}, not {folder}" in probe.stderr, probe.stderr
