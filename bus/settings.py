"""Process settings: one frozen object, built from the `RELAYBUS_*` variables passed in.

The bus owns only what the transport and the process need (`Settings`). Each layer above it
declares its own settings beside its code, as a `LayerSettings` subclass, and reads them with
`LedgerSettings.of(settings)`. `Settings` carries those layers' raw values in `layers`, so one
environment configures a whole process and `settings.env()` hands all of it to a child. A
`RELAYBUS_*` name that neither the bus nor any layer declares is an error: misspelt variables
fail at start-up instead of being ignored.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self, cast

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationError
from pydantic_core import CoreSchema, core_schema

from .errors import ConfigError

ENV_PREFIX = "RELAYBUS_"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")


class LayerValues(Mapping[str, str]):
    """The layers' raw values by lower-case name (`ledger_spike` → "5"). Immutable and hashable,
    so settings stay frozen and a layer's parsed settings are cached by them."""

    __slots__ = ("_hash", "_values")

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})
        self._hash = hash(frozenset(self._values.items()))  # once: `of` hashes it on every call

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"LayerValues({self._values!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls,
            handler.generate_schema(dict[str, str]),
            serialization=core_schema.plain_serializer_function_ser_schema(dict),
        )


class Settings(BaseModel):
    """What the transport and the process are told; every other layer's values ride in `layers`."""

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
    # NATS authentication and least-privilege permissions on the embedded server: on unless
    # RELAYBUS_NATS_AUTH=0 (development only; `up` then warns loudly)
    nats_auth: bool = True
    trace_dir: Path | None = None  # write spans as JSON lines here (one file per process)
    trace_content: bool = False  # record prompt and completion text on LLM spans
    metrics_host: str = "127.0.0.1"  # where `--metrics-port` listens
    # the other RELAYBUS_* values, unparsed: each layer parses its own (LayerSettings.of)
    layers: LayerValues = Field(default_factory=LayerValues)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from the `RELAYBUS_*` entries of `environ`, then `overrides` (transport
        and layer fields alike: `from_env({}, nats_url=url, ledger=True)`)."""
        values: dict[str, Any] = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in environ.items()
            if key.startswith(ENV_PREFIX) and value != ""
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls._build(values)

    def with_values(self, **values: Any) -> Settings:
        """These settings with `values` changed, checked like `from_env`; None restores a default.
        Use it instead of `model_copy`, which cannot reach the layers' fields."""
        current: dict[str, Any] = {name: getattr(self, name) for name in _TRANSPORT}
        merged = {**current, **self.layers, **values}
        return type(self)._build({k: v for k, v in merged.items() if v is not None})

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        misplaced = sorted(set(update or {}) - transport_names())
        if misplaced:
            raise TypeError(
                f"Settings.model_copy cannot set {', '.join(misplaced)}: use "
                f"settings.with_values({misplaced[0]}=...), which reaches the layers' settings"
            )
        return super().model_copy(update=update, deep=deep)

    def env(self) -> dict[str, str]:
        """The `RELAYBUS_*` variables that rebuild these settings in a child process."""
        out: dict[str, str] = {}
        for name in _TRANSPORT:
            value = getattr(self, name)
            if value is not None and value != type(self).model_fields[name].default:
                out[ENV_PREFIX + name.upper()] = as_text(value)
        out.update({ENV_PREFIX + name.upper(): value for name, value in self.layers.items()})
        return out

    @classmethod
    def _build(cls, values: Mapping[str, Any]) -> Settings:
        transport = {k: v for k, v in values.items() if k in transport_names()}
        layered = {k: as_text(v) for k, v in values.items() if k not in transport}
        unknown = sorted(set(layered) - known_names())
        if unknown:
            raise ConfigError("; ".join(_not_a_setting(name) for name in unknown))
        try:
            settings = cls(**transport, layers=LayerValues(layered))
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None
        if not _PREFIX_RE.match(settings.prefix):
            raise ConfigError(
                f"RELAYBUS_PREFIX={settings.prefix!r} is not a valid subject prefix: "
                "use lowercase letters, digits, '_' or '-', starting with a letter"
            )
        _check_layers(settings)
        return settings


_TRANSPORT = tuple(name for name in Settings.model_fields if name != "layers")


class LayerSettings(BaseModel):
    """A layer's own settings. Subclass it beside the layer's code, one field per `RELAYBUS_*`
    variable (`ledger_spike` is RELAYBUS_LEDGER_SPIKE), and read it with `Mine.of(settings)`.
    Defining the subclass registers its names, so `Settings.from_env` accepts and checks them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # pydantic's hook rather than __init_subclass__: it runs once the fields are known
    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _register(cls)

    @classmethod
    def of(cls, settings: Settings) -> Self:
        """This layer's settings in `settings`; raises ConfigError naming a bad variable."""
        return cast(Self, _parse(cls, settings.layers))


_REGISTRY: dict[str, type[LayerSettings]] = {}


def _register(layer: type[LayerSettings]) -> None:
    key = f"{layer.__module__}.{layer.__qualname__}"
    for name in layer.model_fields:
        owner = "the bus" if name in Settings.model_fields else _owner_of(name, besides=key)
        if owner:
            raise TypeError(
                f"{key}.{name}: {ENV_PREFIX}{name.upper()} is already a setting of {owner}; "
                "every variable has one owner: read it through that layer's settings instead"
            )
    _REGISTRY[key] = layer  # by qualified name: re-importing a module replaces its class


def _owner_of(name: str, besides: str) -> str | None:
    for key, layer in _REGISTRY.items():
        if key != besides and name in layer.model_fields:
            return key
    return None


def transport_names() -> set[str]:
    """The bus's own settings (lower-case, without the prefix)."""
    return set(_TRANSPORT)


def registered_layers() -> list[type[LayerSettings]]:
    """Every layer's settings class defined so far (relaybus/__init__ imports them all)."""
    return list(_REGISTRY.values())


def known_names() -> set[str]:
    """Every setting a process accepts: the bus's and every registered layer's."""
    names = transport_names()
    for layer in registered_layers():
        names.update(layer.model_fields)
    return names


def as_text(value: Any) -> str:
    """A value as its variable would spell it (True → "1")."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@functools.lru_cache(maxsize=256)
def _parse(layer: type[LayerSettings], values: LayerValues) -> LayerSettings:
    try:
        return layer(**{name: values[name] for name in layer.model_fields if name in values})
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _check_layers(settings: Settings) -> None:
    """Parse every layer's values now, so a bad one stops the process at start-up."""
    problems = []
    for layer in registered_layers():
        try:
            layer.of(settings)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))


def _not_a_setting(name: str) -> str:
    variable = ENV_PREFIX + name.upper()
    known = sorted(ENV_PREFIX + n.upper() for n in known_names())
    close = difflib.get_close_matches(variable, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{variable} is not a relaybus setting ({hint}known: {', '.join(known)})"


def _explain(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
        problems.append(f"{name}={err.get('input')!r}: {err['msg']}")
    return "; ".join(problems)
