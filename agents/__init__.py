"""The relaybus agent runtime: write an `Agent`, run it as its own process.

Handlers get a `Context` whose operations are journaled: a crash, a redelivery or a resume
replays recorded results instead of running effects again.
"""

if __name__ != "relaybus.agents":  # the checkout's folder imported by its own name
    raise ImportError(
        "relaybus's agents/ folder is the package relaybus.agents: import relaybus.agents, "
        "not agents (`from relaybus import ...`; run its modules as `python -m relaybus.agents...`)"
    )

from typing import TYPE_CHECKING

from relaybus.bus.lazy import exports

# `submit` and `tool` share their modules' names: importing the submodule would bind the module
# to the package attribute, so these two functions are bound here, eagerly (both are small).
from .submit import submit
from .tool import tool

if TYPE_CHECKING:
    from .base import Agent
    from .context import Context, Handle
    from .errors import (
        Cancelled,
        ChildFailed,
        GatherTimeout,
        LimitExceeded,
        SubmissionInvalid,
        ToolArgumentsInvalid,
    )
    from .interceptors import Interceptor
    from .journal import Fenced, JournalDivergence
    from .submit import RunOutcome
    from .tool import Tool

__getattr__ = exports(
    __name__,
    {
        ".base": ["Agent"],
        ".context": ["Context", "Handle"],
        ".errors": [
            "Cancelled",
            "ChildFailed",
            "GatherTimeout",
            "LimitExceeded",
            "SubmissionInvalid",
            "ToolArgumentsInvalid",
        ],
        ".interceptors": ["Interceptor"],
        ".journal": ["Fenced", "JournalDivergence"],
        ".submit": ["RunOutcome"],
        ".tool": ["Tool"],
    },
)

__all__ = [
    "Agent",
    "Cancelled",
    "ChildFailed",
    "Context",
    "Fenced",
    "GatherTimeout",
    "Handle",
    "Interceptor",
    "JournalDivergence",
    "LimitExceeded",
    "RunOutcome",
    "SubmissionInvalid",
    "Tool",
    "ToolArgumentsInvalid",
    "submit",
    "tool",
]
