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


class CodeSettings(LayerSettings):
    """RELAYBUS_CODE_*: the code interpreter's sandbox (docs/code.md) and the most any one call
    may ask for (a call asks for less in its arguments; a scope can lower it further)."""

    code_bwrap: str = "bwrap"  # the bubblewrap binary; without it the tool refuses to run
    code_python: str | None = None  # the interpreter inside; default /usr/bin/python3
    code_uid: int = 65534  # host uid the sandbox runs as when relaybus runs as root
    code_max_cpu_seconds: float = 30.0
    code_max_wall_seconds: float = 60.0
    code_max_memory_mb: int = 1024
    code_max_processes: int = 32
    code_max_output_bytes: int = 256 * 1024  # each of stdout and stderr, and files out
    code_scratch_mb: int = 64  # the private scratch directory (a tmpfs) the code works in


class CallerSettings(LayerSettings):
    """RELAYBUS_USER and RELAYBUS_TOKEN: whom a locally launched process acts for, e.g. a
    `relaybus mcp serve --stdio` that an MCP client started (it trusts its launcher)."""

    user: str = ""
    token: str | None = None
