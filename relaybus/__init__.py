"""relaybus: production infrastructure for multi-agent AI systems over NATS JetStream.

The one import root. What an agent author needs is here:

    from relaybus import Agent, Context, tool

and what a service that submits tasks needs:

    async with relaybus.Client(user="alice", token=TOKEN) as client:
        run = await client.submit("research", {"topic": "tides"}, run_id="order-1842")
        result = await run.result()

The layers live below it: `relaybus.bus` (transport), `relaybus.services` and `relaybus.memory`
(the control-plane services and their clients), `relaybus.agents` (the runtime).
"""

from typing import TYPE_CHECKING

# Each layer's settings class registers its RELAYBUS_* names when its module is imported, and
# Settings.from_env refuses names nobody registered. Every `relaybus.*` import runs this module
# first, so importing the settings modules here makes the registry complete whatever else a
# process imports. They are small: the layers' packages load their code on first use, so a
# service process does not pay for the agent runtime, the MCP SDK or the console.
from relaybus.agents import settings as _agent_settings  # noqa: F401
from relaybus.bus.lazy import exports
from relaybus.memory import settings as _memory_settings  # noqa: F401
from relaybus.services.identity import settings as _identity_settings  # noqa: F401
from relaybus.services.ledger import settings as _ledger_settings  # noqa: F401
from relaybus.services.payments import settings as _payments_settings  # noqa: F401

if TYPE_CHECKING:
    from relaybus.agents import (
        Agent,
        Cancelled,
        ChildFailed,
        Context,
        GatherTimeout,
        Handle,
        Interceptor,
        LimitExceeded,
        RunOutcome,
        SubmissionInvalid,
        Tool,
        ToolArgumentsInvalid,
        submit,
        tool,
    )
    from relaybus.bus import Bus, RelayError, RunFailed, Settings
    from relaybus.client import Client, Run, RunIdTaken, RunTimedOut

__getattr__ = exports(
    __name__,
    {
        "relaybus.agents": [
            "Agent",
            "Cancelled",
            "ChildFailed",
            "Context",
            "GatherTimeout",
            "Handle",
            "Interceptor",
            "LimitExceeded",
            "RunOutcome",
            "SubmissionInvalid",
            "Tool",
            "ToolArgumentsInvalid",
            "submit",
            "tool",
        ],
        "relaybus.bus": ["Bus", "RelayError", "RunFailed", "Settings"],
        "relaybus.client": ["Client", "Run", "RunIdTaken", "RunTimedOut"],
    },
)

__all__ = [
    "Agent",
    "Bus",
    "Cancelled",
    "ChildFailed",
    "Client",
    "Context",
    "GatherTimeout",
    "Handle",
    "Interceptor",
    "LimitExceeded",
    "RelayError",
    "Run",
    "RunFailed",
    "RunIdTaken",
    "RunOutcome",
    "RunTimedOut",
    "Settings",
    "SubmissionInvalid",
    "Tool",
    "ToolArgumentsInvalid",
    "submit",
    "tool",
]
