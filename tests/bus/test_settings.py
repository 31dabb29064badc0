from pathlib import Path

import pytest

from relaybus.bus import ConfigError, Settings


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
