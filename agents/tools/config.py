"""Data sources, declared in a TOML file (RELAYBUS_DATA_SOURCES), checked on load.

[sql.pricing]                          # tools pricing.<query>, pricing.sql; scope data/query/pricing
url = "sqlite:///compose/data/pricing.db"   # or postgresql://...
timeout_s = 2.0
max_rows = 200
free_form = true                       # offer pricing.sql (parsed, refused unless a safe SELECT)

[sql.pricing.tables.competitor_prices]
columns = ["competitor", "product", "price_usd", "updated"]
tenant_column = "tenant"               # added by the tool from the verified chain

[sql.pricing.queries.price_of]         # a named, reviewed query: the model fills parameters
sql = "SELECT competitor, price_usd FROM competitor_prices WHERE product = :product"
params = { product = "str" }

[api.crm]                              # tools crm.<endpoint>; scope api/call/crm/<endpoint>
base_url = "http://127.0.0.1:8080"
headers = { Authorization = "Bearer ${CRM_TOKEN}" }   # secrets come from the environment

[api.crm.endpoints.lookup]
method = "GET"
path = "/customers/{customer_id}"
params = { customer_id = "str" }

[mcp.time]                             # tools time.<tool>; scope mcp/time/<tool> (docs/mcp.md)
command = ["mcp-server-time"]          # stdio: the server's argv; or url = "http://.../mcp"
env = { TZ_TOKEN = "${TZ_TOKEN}" }     # stdio: its environment; url: headers = {...}
tools = ["get_current_time"]           # only these are offered (default: every tool listed)
price = { get_current_time = 2 }       # micro-units per call, held and captured by the ledger
[a2a.pricing_agent]                    # tool a2a.pricing_agent; scope a2a/pricing_agent
url = "https://agents.example.com/pricing"   # the remote A2A agent (its card under it)
headers = { Authorization = "Bearer ${PRICING_AGENT_TOKEN}" }
price = 5000                           # micro-units per call (docs/a2a.md)
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from relaybus.bus import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_SECRET = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
PARAM_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_params(params: dict[str, str]) -> dict[str, str]:
    for name, kind in params.items():
        if not _NAME.match(name):
            raise ValueError(f"parameter name {name!r}: use lowercase letters, digits and '_'")
        if kind not in PARAM_TYPES:
            raise ValueError(f"parameter {name}: type {kind!r} is not one of {sorted(PARAM_TYPES)}")
    return params


class Table(_Strict):
    columns: list[str] = Field(min_length=1)
    tenant_column: str = ""
    shared: bool = False  # true: every tenant may read every row (no tenant_column)

    @field_validator("columns")
    @classmethod
    def _no_duplicates(cls, columns: list[str]) -> list[str]:
        if len(set(columns)) != len(columns):
            raise ValueError("columns are listed twice")
        return columns


class NamedQuery(_Strict):
    sql: str
    params: dict[str, str] = {}
    description: str = ""

    _check = field_validator("params")(_check_params)


class SqlSource(_Strict):
    url: str
    tables: dict[str, Table] = Field(min_length=1)
    queries: dict[str, NamedQuery] = {}
    free_form: bool = False
    timeout_s: float = Field(default=2.0, gt=0, le=300)
    max_rows: int = Field(default=200, ge=1, le=100_000)
    max_bytes: int = Field(default=256_000, ge=1024)
    cost: int = Field(default=0, ge=0)  # micro-units per query, held and captured by the ledger


class Endpoint(_Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str
    params: dict[str, str] = {}
    description: str = ""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_bytes: int = Field(default=256_000, ge=256)
    retries: int = Field(default=3, ge=1, le=10)
    cost: int = Field(default=1, ge=0)  # > 0 so the ledger's rate limits apply to the endpoint
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)

    _check = field_validator("params")(_check_params)


class ApiSource(_Strict):
    base_url: str
    headers: dict[str, str] = Field(default={}, repr=False)
    # the values filled in from the environment, scrubbed from whatever the tools return
    filled: list[str] = Field(default=[], repr=False, exclude=True)
    endpoints: dict[str, Endpoint] = Field(min_length=1)


class McpServer(_Strict):
    """An MCP server whose tools become `<server>.<tool>`: started as `command` (stdio) or
    reached at `url` (streamable HTTP)."""

    command: list[str] = []
    env: dict[str, str] = Field(default={}, repr=False)
    url: str = ""
    headers: dict[str, str] = Field(default={}, repr=False)
    filled: list[str] = Field(default=[], repr=False, exclude=True)
    tools: list[str] | None = None  # the allow-list; None: every tool the server lists
    price: dict[str, int] = {}  # micro-units per call of a tool (0 when not named)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_result_bytes: int = Field(default=64_000, ge=256, le=16_000_000)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if bool(self.command) == bool(self.url):
            raise ValueError('give either command = [...] (stdio) or url = "http://..."')
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
        if self.command and self.headers:
            raise ValueError("headers are for url servers; a command server gets env = {...}")
        if self.url and self.env:
            raise ValueError("env is for command servers; a url server gets headers = {...}")
        for tool, price in self.price.items():
            if price < 0:
                raise ValueError(f"price of {tool} must be >= 0 micro-units")
            if self.tools is not None and tool not in self.tools:
                raise ValueError(f"price names {tool!r}, which is not in tools = {self.tools}")
        return self


class A2aSource(_Strict):
    """A remote A2A agent, called as the tool `a2a.<name>` (agents/a2a/remote.py)."""

    url: str
    headers: dict[str, str] = Field(default={}, repr=False)
    filled: list[str] = Field(default=[], repr=False, exclude=True)
    price: int = Field(default=1, ge=0)  # micro-units per call, held and captured by the ledger
    description: str = ""
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_bytes: int = Field(default=256_000, ge=1024)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)


class Sources(_Strict):
    sql: dict[str, SqlSource] = {}
    api: dict[str, ApiSource] = {}
    mcp: dict[str, McpServer] = {}
    a2a: dict[str, A2aSource] = {}


def load_sources(path: Path, environ: Mapping[str, str] | None = None) -> Sources:
    """Parse and check a sources file; `${VAR}` in API headers is filled from `environ`."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"RELAYBUS_DATA_SOURCES={path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        sources = Sources.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    for kind, group in (
        ("sql", sources.sql),
        ("api", sources.api),
        ("mcp", sources.mcp),
        ("a2a", sources.a2a),
    ):
        for name in group:
            if not _NAME.match(name):
                raise ConfigError(f"{path}: [{kind}.{name}]: use lowercase letters, digits and '_'")
    for name, api in sources.api.items():
        for endpoint in api.endpoints:
            if not _NAME.match(endpoint):
                raise ConfigError(f"{path}: [api.{name}.endpoints.{endpoint}]: bad endpoint name")
    env = os.environ if environ is None else environ
    apis = {}
    for name, api in sources.api.items():
        headers, filled = _fill(path, f"[api.{name}] header", api.headers, env)
        apis[name] = api.model_copy(update={"headers": headers, "filled": filled})
    servers = {}
    for name, server in sources.mcp.items():
        headers, filled = _fill(path, f"[mcp.{name}] header", server.headers, env)
        variables, more = _fill(path, f"[mcp.{name}] env", server.env, env)
        servers[name] = server.model_copy(
            update={"headers": headers, "env": variables, "filled": filled + more}
        )
    remotes = {}
    for name, remote in sources.a2a.items():
        headers, filled = _fill(path, f"[a2a.{name}] header", remote.headers, env)
        remotes[name] = remote.model_copy(update={"headers": headers, "filled": filled})
    return sources.model_copy(update={"api": apis, "mcp": servers, "a2a": remotes})


def _fill(
    path: Path, where: str, values: dict[str, str], env: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """`values` with each `${VAR}` filled from `env`, and the values filled in."""
    done, filled = {}, []
    for key, value in values.items():
        missing = [v for v in _SECRET.findall(value) if v not in env]
        if missing:
            raise ConfigError(f"{path}: {where} {key} needs ${{{missing[0]}}}, which is not set")
        done[key] = _SECRET.sub(lambda m: env[m[1]], value)
        filled += [env[v] for v in _SECRET.findall(value)]
    return done, filled


def secret_values(api: ApiSource | McpServer | A2aSource) -> list[str]:
    """What is scrubbed from anything an API, MCP or A2A tool returns or raises: each value filled
    in from the environment, and each whole header value, longest first."""
    values = {v for v in [*api.filled, *api.headers.values()] if len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def params_model(name: str, params: dict[str, str]) -> type[BaseModel]:
    """The tool's argument model: the declared, typed parameters, nothing else."""
    fields: dict[str, Any] = {p: (PARAM_TYPES[kind], ...) for p, kind in params.items()}
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)
