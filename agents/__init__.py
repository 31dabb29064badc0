"""The relaybus agent runtime: write an `Agent`, run it as its own process.

Handlers get a `Context` whose operations are journaled: a crash, a redelivery or a resume
replays recorded results instead of running effects again.
"""

from .base import Agent
from .context import Context, Handle
from .errors import Cancelled, ChildFailed, GatherTimeout, LimitExceeded, ToolArgumentsInvalid
from .interceptors import Interceptor
from .journal import Fenced, JournalDivergence
from .submit import RunOutcome, submit
from .tool import Tool, tool

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
    "Tool",
    "ToolArgumentsInvalid",
    "submit",
    "tool",
]
