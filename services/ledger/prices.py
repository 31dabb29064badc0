"""The price table: what a tool call or a model's tokens cost, in micro-units, from a file
the user edits (`RELAYBUS_PRICES=prices.toml` or `.json`).

    [tools]
    search_docs = 200          # per call

    [models."gpt-4o-mini"]
    input = 1                  # per input token
    output = 4                 # per output token
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import msgspec

from relaybus.bus import ConfigError


class ModelPrice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: int = 0
    output: int = 0


class PriceTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tools: dict[str, int] = {}
    models: dict[str, ModelPrice] = {}

    def tool(self, name: str, default: int) -> int:
        return self.tools.get(name, default)

    def chat(self, model: str, input_tokens: int, output_tokens: int) -> int:
        price = self.models.get(model)
        if price is None:
            raise ConfigError(f"no price for model {model!r} in the price table (RELAYBUS_PRICES)")
        return price.input * input_tokens + price.output * output_tokens


def load_prices(path: Path | None) -> PriceTable:
    if path is None:
        return PriceTable()
    try:
        text = path.read_text()
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        table = msgspec.convert(raw, PriceTable)
    except FileNotFoundError:
        raise ConfigError(f"RELAYBUS_PRICES={path}: no such file") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"RELAYBUS_PRICES={path} does not parse: {exc}") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(f"RELAYBUS_PRICES={path}: {exc}") from None
    bad = [f"tools.{k}" for k, v in table.tools.items() if v < 0] + [
        f"models.{k}" for k, v in table.models.items() if v.input < 0 or v.output < 0
    ]
    if bad:
        raise ConfigError(
            f"RELAYBUS_PRICES={path}: prices must be >= 0 micro-units ({', '.join(bad)})"
        )
    return table
