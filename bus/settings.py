"""Process settings: one frozen object, built from `RELAYBUS_*` variables passed in."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

ENV_PREFIX = "RELAYBUS_"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")


class Settings(BaseModel):
    """Everything a relaybus process can be told. Misspelt variables are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nats_url: str | None = None
    home: Path = Path(".relaybus")
    prefix: str = "relay"
    nats_server: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=5.0, gt=0)
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=5, ge=1)
    max_payload_bytes: int = Field(default=1_000_000, ge=1024)
    stream_replicas: int = Field(default=1, ge=1, le=5)  # 3 on a NATS cluster: R3 streams and KV
    log_level: str = "INFO"
    identity: bool = False
    identity_max_root_ttl_s: float = Field(
        default=86_400.0, gt=0
    )  # the longest a run's root link lives
    # NATS authentication and least-privilege permissions on the embedded server: on unless
    # RELAYBUS_NATS_AUTH=0 (development only; `up` then warns loudly)
    nats_auth: bool = True
    ledger: bool = False
    ledger_timezone: str = "UTC"
    ledger_currency: str = "USD"
    prices: Path | None = None
    embedder: str = "auto"  # auto | minilm | lexical
    ledger_spike: float = Field(default=5.0, gt=1.0)
    ledger_lease: int = 0  # micro-units per leased chunk; 0: a hold and a capture per costed step
    qdrant_url: str | None = None
    trace_dir: Path | None = None  # write spans as JSON lines here (one file per process)
    trace_content: bool = False  # record prompt and completion text on LLM spans
    metrics_host: str = "127.0.0.1"  # where `--metrics-port` listens
    data_sources: Path | None = None  # TOML file declaring SQL sources and HTTP APIs for tools
    memory_gc_interval_s: float = Field(default=3600.0, ge=0)  # 0: no background GC
    memory_retention_days: float = Field(default=30.0, ge=0)
    memory_ttl: str = "scratch=1"  # KIND=DAYS,KIND=DAYS
    memory_cap: int = Field(default=10_000, ge=0)  # current memories per tenant; 0: no cap
    memory_half_life_days: float = Field(default=30.0, gt=0)
    memory_duplicate_score: float = Field(default=0.95, ge=0, le=1)  # 0: no near-duplicate sweep
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str | None = None
    smtp_url: str | None = None
    smtp_from: str = "relaybus@localhost"  # the From: of mail agents send
    payments_url: str | None = (
        None  # a Stripe-compatible API (the sandbox: `relaybus dev payments`)
    )
    payments_api_key: str | None = None
    payments_webhook_secret: str | None = None
    payments_approval_over: int = Field(
        default=10_000, ge=0
    )  # minor units; above: a human approves

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from the `RELAYBUS_*` entries of `environ`, then `overrides`."""
        values: dict[str, Any] = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in environ.items()
            if key.startswith(ENV_PREFIX) and value != ""
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = cls(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None
        if not _PREFIX_RE.match(settings.prefix):
            raise ConfigError(
                f"RELAYBUS_PREFIX={settings.prefix!r} is not a valid subject prefix: "
                "use lowercase letters, digits, '_' or '-', starting with a letter"
            )
        return settings

    def env(self) -> dict[str, str]:
        """The `RELAYBUS_*` variables that rebuild these settings in a child process."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is not None and value != type(self).model_fields[name].default:
                out[ENV_PREFIX + name.upper()] = str(value)
        return out


def _explain(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
        if err["type"] == "extra_forbidden":
            known = ", ".join(ENV_PREFIX + f.upper() for f in Settings.model_fields)
            problems.append(f"{name} is not a relaybus setting (known: {known})")
        else:
            problems.append(f"{name}={err.get('input')!r}: {err['msg']}")
    return "; ".join(problems)
