"""The dependency direction, checked by walking every import in the source tree."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bus", "agents", "memory", "services")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_bus_imports_no_upper_layer_and_nats_stays_in_bus() -> None:
    problems = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found = imports_of(path)
            if package == "bus" and found & {"agents", "memory", "services"}:
                problems.append(f"{path}: bus imports {found & {'agents', 'memory', 'services'}}")
            if package != "bus" and "nats" in found:
                problems.append(f"{path}: imports nats outside bus/")
            if package in ("memory", "services") and "agents" in found:
                problems.append(f"{path}: {package} imports the agents runtime")
    assert problems == []


def test_the_walker_sees_imports() -> None:
    assert "nats" in imports_of(ROOT / "bus" / "client.py")
