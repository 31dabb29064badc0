"""The interop example: one MCP tool and one A2A call in a real run (see README.md beside it).

`travel_planner` asks the published MCP server `mcp-server-time` (stdio) for the local time at
the destination, and asks `quoter` for a price over A2A. `quoter` is a relaybus agent too, served
to A2A callers by `relaybus a2a serve --agent quoter`, as another organisation's agent would be.
Both calls go through `ctx.tool`: the identity gate, the ledger, the journal, the audit and the
span apply to each, with the prices declared in sources.toml.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from relaybus import Agent, Context
from relaybus.agents.tools import DataTools

NIGHTLY_USD = {"lisbon": 140, "nairobi": 95, "tokyo": 210}
DEFAULT_NIGHTLY_USD = 120


class QuoteRequest(msgspec.Struct):
    destination: str
    nights: int


class Trip(msgspec.Struct):
    destination: str
    timezone: str  # an IANA name, e.g. "Asia/Tokyo"
    nights: int


class Quoter(Agent):
    """Prices a stay. Reached over A2A: `relaybus a2a serve --agent quoter`."""

    name = "quoter"

    async def handle(self, ctx: Context, task: QuoteRequest) -> dict[str, Any]:
        nightly = NIGHTLY_USD.get(task.destination, DEFAULT_NIGHTLY_USD)
        return {
            "destination": task.destination,
            "nights": task.nights,
            "nightly_usd": nightly,
            "total_usd": nightly * task.nights,
        }


@functools.cache
def sources() -> DataTools:
    """The tools sources.toml declares (RELAYBUS_DATA_SOURCES): time.*, a2a.quoter."""
    return DataTools.from_settings()


class TravelPlanner(Agent):
    """The local time at the destination (MCP) and a quote for the stay (A2A), in one result."""

    name = "travel_planner"

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        # sources.toml is read when the process starts; the MCP server process and the A2A
        # client are closed when it stops
        async with contextlib.aclosing(sources()):
            yield

    async def handle(self, ctx: Context, task: Trip) -> dict[str, Any]:
        clock = await sources().mcp.tool("time.get_current_time")
        now = await ctx.tool(clock, timezone=task.timezone)
        quote = await ctx.tool(
            sources()["a2a.quoter"],
            data={"destination": task.destination, "nights": task.nights},
        )
        return {
            "destination": task.destination,
            "local_time": now["structured"]["datetime"],  # from mcp-server-time
            "quote": quote["data"][0],  # the quoter's result, from its A2A artifact
            "quote_run": f"a2a-{quote['task_id']}",  # the quoter's own run on the serving side
        }
