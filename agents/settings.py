"""The agents layer's settings: the LLM endpoint agents call, and the built-in tools' outside
world (mail, data sources). Kept out of `agents.llm` and `agents.tools` so registering them costs
no import of the tools' database drivers."""

from __future__ import annotations

from pathlib import Path

from relaybus.bus.settings import LayerSettings


class LlmSettings(LayerSettings):
    """RELAYBUS_LLM_*. Without a base URL agents use the scripted dev model."""

    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str | None = None


class ToolSettings(LayerSettings):
    """RELAYBUS_SMTP_* and RELAYBUS_DATA_SOURCES."""

    smtp_url: str | None = None
    smtp_from: str = "relaybus@localhost"  # the From: of mail agents send
    data_sources: Path | None = None  # TOML file declaring SQL sources and HTTP APIs for tools


class CallerSettings(LayerSettings):
    """RELAYBUS_USER and RELAYBUS_TOKEN: whom a locally launched process acts for, e.g. a
    `relaybus mcp serve --stdio` that an MCP client started (it trusts its launcher)."""

    user: str = ""
    token: str | None = None
