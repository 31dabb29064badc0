"""`relaybus mcp serve`: relaybus agents as MCP tools, over streamable HTTP or stdio."""

from typing import TYPE_CHECKING

from relaybus.bus.lazy import exports

if TYPE_CHECKING:
    from .access import Caller, McpRefused, RunNotFound, Unauthenticated
    from .exposed import ArgumentsInvalid, ExposedAgent, expose, expose_name
    from .server import CANCEL_RUN, READ_RUN, RelaybusTools

__getattr__ = exports(
    __name__,
    {
        ".access": ["Caller", "McpRefused", "RunNotFound", "Unauthenticated"],
        ".exposed": ["ArgumentsInvalid", "ExposedAgent", "expose", "expose_name"],
        ".server": ["CANCEL_RUN", "READ_RUN", "RelaybusTools"],
    },
)

__all__ = [
    "CANCEL_RUN",
    "READ_RUN",
    "ArgumentsInvalid",
    "Caller",
    "ExposedAgent",
    "McpRefused",
    "RelaybusTools",
    "RunNotFound",
    "Unauthenticated",
    "expose",
    "expose_name",
]
