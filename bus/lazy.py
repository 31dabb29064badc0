"""Package exports loaded on first use (PEP 562), so importing a package costs only what is used.

`from relaybus import Agent` works as before; a service process that never touches the agent
runtime does not import it (nor httpx, the MCP SDK or the console). Each package keeps a
TYPE_CHECKING block with the same names, which is what type checkers and editors read."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence


def exports(package: str, modules: Mapping[str, Sequence[str]]) -> Callable[[str], object]:
    """A module `__getattr__` for `package` that imports each name from its module when asked."""
    home = {name: module for module, names in modules.items() for name in names}
    for name in home:  # importing that submodule would bind it, not the export, to the name
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            raise ImportError(f"{package}.{name} is a module: import the export {name!r} eagerly")

    def __getattr__(name: str) -> object:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
