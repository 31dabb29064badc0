"""Structured data tools: read-only, tenant-scoped SQL and declared HTTP API endpoints.

from relaybus.agents.tools import DataTools

DATA = DataTools.from_settings()          # RELAYBUS_DATA_SOURCES (a TOML file, see config)
rows = await ctx.tool(DATA["pricing.price_of"], product="widget")
rows = await ctx.tool(DATA["pricing.sql"], sql="SELECT product, avg(price_usd) ...")
customer = await ctx.tool(DATA["crm.lookup"], customer_id="c-42")
now = await ctx.tool(await DATA.mcp.tool("time.get_current_time"), timezone="UTC")  # docs/mcp.md
answer = await ctx.tool(DATA["a2a.pricing_agent"], text="price of widget?")   # a remote A2A agent
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaybus.bus import ConfigError, Settings

from ..settings import ToolSettings
from ..tool import Tool
from .config import Sources, load_sources
from .http import ApiClient, api_tools
from .sql import SqlDatabase, sql_tools

if TYPE_CHECKING:
    from .mcp import McpServers


class DataTools(Mapping[str, Tool]):
    """Every tool the configured sources offer, by name (`pricing.sql`, `crm.lookup`, …)."""

    def __init__(self, sources: Sources) -> None:
        self.databases = [SqlDatabase(name, source) for name, source in sources.sql.items()]
        self.apis = [ApiClient(name, api) for name, api in sources.api.items()]
        from .mcp import McpServers  # the mcp SDK only where MCP tools are used

        self.mcp: McpServers = McpServers(sources.mcp)  # tools listed by the servers, on first use
        self._tools: dict[str, Tool] = {}
        for db in self.databases:
            self._tools.update(sql_tools(db))
        for api in self.apis:
            self._tools.update(api_tools(api))
        self.remotes: list[Any] = []
        if sources.a2a:  # the a2a-sdk is imported only by those who declare a remote agent
            from relaybus.agents.a2a.remote import RemoteAgent, remote_tool

            self.remotes = [RemoteAgent(name, a) for name, a in sources.a2a.items()]
            self._tools.update({(t := remote_tool(r)).name: t for r in self.remotes})

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] | None = None) -> DataTools:
        return cls(load_sources(path, environ))

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DataTools:
        settings = settings or Settings.from_env(os.environ)
        data_sources = ToolSettings.of(settings).data_sources
        if data_sources is None:
            raise ConfigError("no data sources: set RELAYBUS_DATA_SOURCES to a sources TOML file")
        return cls.load(data_sources)

    def __getitem__(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            hint = ""
            if name.partition(".")[0] in self.mcp.servers:
                hint = f"; {name} is an MCP tool: `await DATA.mcp.tool({name!r})`"
            raise ConfigError(
                f"no data tool {name!r}; the sources offer {sorted(self._tools)}{hint}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    async def aclose(self) -> None:
        for db in self.databases:
            db.close()
        for api in self.apis:
            await api.close()
        await self.mcp.aclose()
        for remote in self.remotes:
            await remote.close()


__all__ = ["ApiClient", "DataTools", "SqlDatabase", "load_sources"]
