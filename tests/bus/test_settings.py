from pathlib import Path

import pytest

from relaybus.bus import ConfigError, LayerSettings, Settings
from relaybus.bus.settings import LayerValues, known_names
from relaybus.memory.settings import MemorySettings
from relaybus.services.identity.settings import IdentitySettings
from relaybus.services.ledger.settings import LedgerSettings


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.nats_url is None
    assert settings.home == Path(".relaybus")
    assert settings.prefix == "relay"


def test_reads_prefixed_variables_only() -> None:
    settings = Settings.from_env(
        {"RELAYBUS_NATS_URL": "nats://127.0.0.1:4222", "HOME": "/root", "RELAYBUS_MAX_DELIVER": "7"}
    )
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.max_deliver == 7


def test_misspelt_variable_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="RELAYBUS_NATS_ULR is not a relaybus setting"):
        Settings.from_env({"RELAYBUS_NATS_ULR": "nats://127.0.0.1:4222"})


def test_bad_value_names_variable_and_value() -> None:
    with pytest.raises(ConfigError, match="RELAYBUS_MAX_DELIVER='many'"):
        Settings.from_env({"RELAYBUS_MAX_DELIVER": "many"})
    with pytest.raises(ConfigError, match="RELAYBUS_ACK_WAIT_S"):
        Settings.from_env({"RELAYBUS_ACK_WAIT_S": "-1"})


def test_prefix_must_be_a_safe_subject_token() -> None:
    with pytest.raises(ConfigError, match="RELAYBUS_PREFIX"):
        Settings.from_env({"RELAYBUS_PREFIX": "a.b"})


def test_settings_are_frozen_and_round_trip_through_env() -> None:
    settings = Settings.from_env({"RELAYBUS_PREFIX": "team1", "RELAYBUS_ACK_WAIT_S": "2.5"})
    with pytest.raises(ValueError):
        settings.prefix = "other"  # type: ignore[misc]
    assert Settings.from_env(settings.env()) == settings


def test_layer_overrides_reach_their_layer_and_round_trip_through_env(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"RELAYBUS_LEDGER_SPIKE": "3"},
        home=tmp_path,
        nats_auth=False,
        ledger=True,
        memory_cap=5,
        prices=tmp_path / "prices.toml",
    )
    ledger = LedgerSettings.of(settings)
    assert (ledger.ledger, ledger.ledger_spike, ledger.prices) == (
        True,
        3.0,
        tmp_path / "prices.toml",
    )
    assert MemorySettings.of(settings).memory_cap == 5
    assert settings.env()["RELAYBUS_LEDGER"] == "1"
    assert Settings.from_env(settings.env()) == settings


def test_an_unknown_name_is_refused_with_the_closest_known_one() -> None:
    with pytest.raises(ConfigError, match="RELAYBUS_LEDGER_SPKE is not a relaybus setting") as exc:
        Settings.from_env({"RELAYBUS_LEDGER_SPKE": "3"})
    assert "did you mean RELAYBUS_LEDGER_SPIKE?" in str(exc.value)
    assert "RELAYBUS_MEMORY_CAP" in str(exc.value)  # the known names include every layer's
    with pytest.raises(ConfigError, match="RELAYBUS_LAYERS is not a relaybus setting"):
        Settings.from_env({"RELAYBUS_LAYERS": "x"})


def test_a_bad_layer_value_is_refused_at_start_up_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"RELAYBUS_LEDGER_SPIKE='0\.5'"):
        Settings.from_env({"RELAYBUS_LEDGER_SPIKE": "0.5"})
    with pytest.raises(ConfigError, match="RELAYBUS_MEMORY_CAP='many'"):
        Settings.from_env({}, memory_cap="many")
    unchecked = Settings(layers=LayerValues({"ledger_spike": "0.5"}))  # bypasses from_env
    with pytest.raises(ConfigError, match=r"RELAYBUS_LEDGER_SPIKE='0\.5'"):
        LedgerSettings.of(unchecked)


def test_with_values_changes_transport_and_layer_fields_and_model_copy_refuses_layers() -> None:
    settings = Settings.from_env({}, ledger=True, embedder="lexical")
    changed = settings.with_values(ledger=None, identity=True, ack_wait_s=2.0)
    assert LedgerSettings.of(changed).ledger is False  # None: back to the default
    assert IdentitySettings.of(changed).identity is True
    assert MemorySettings.of(changed).embedder == "lexical"
    assert changed.ack_wait_s == 2.0
    with pytest.raises(ConfigError, match="RELAYBUS_LEDGER_SPIKE"):
        settings.with_values(ledger_spike=1)
    with pytest.raises(TypeError, match=r"with_values\(identity=...\)"):
        settings.model_copy(update={"identity": True})
    assert settings.model_copy(update={"ack_wait_s": 2.0}).ack_wait_s == 2.0


def test_a_variable_has_one_owner() -> None:
    with pytest.raises(TypeError, match="RELAYBUS_LEDGER_SPIKE is already a setting of"):

        class Spikes(LayerSettings):
            ledger_spike: float = 2.0

    with pytest.raises(TypeError, match="RELAYBUS_PREFIX is already a setting of the bus"):

        class Prefixed(LayerSettings):
            prefix: str = "x"

    assert "ledger_spike" in known_names() and "prefix" in known_names()
