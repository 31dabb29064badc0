"""Errors cross processes as data and come back as their own classes, with their own fields."""

import msgspec

from relaybus.bus import ErrorInfo, RelayError, RunFailed
from relaybus.bus.errors import error_class, rebuild_error
from relaybus.services.ledger.errors import RateLimited


class QuotaSpent(RelayError):
    """A layer's own error, defined outside bus/: registered by defining it."""

    def __init__(self, message: str, quota: int = 0) -> None:
        super().__init__(message)
        self.quota = quota

    def details(self) -> dict[str, str | int | float | bool]:
        return {"quota": self.quota}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        quota = info.details.get("quota", 0)
        return cls(info.message, quota if isinstance(quota, int) else 0)


def over_the_wire(exc: RelayError) -> RelayError:
    info = msgspec.json.decode(msgspec.json.encode(ErrorInfo.from_exception(exc)), type=ErrorInfo)
    return rebuild_error(info)


def test_a_rate_limit_keeps_its_retry_time_without_parsing_the_message() -> None:
    again = over_the_wire(RateLimited("slow down", 7.5))
    assert isinstance(again, RateLimited) and again.retry_after_s == 7.5


def test_a_layers_own_error_is_rebuilt_by_name_with_its_fields() -> None:
    assert error_class("QuotaSpent") is QuotaSpent
    again = over_the_wire(QuotaSpent("monthly quota spent", quota=40))
    assert (
        isinstance(again, QuotaSpent) and again.quota == 40 and str(again) == "monthly quota spent"
    )


def test_a_run_failure_keeps_the_inner_error_even_with_colons_in_its_type_text() -> None:
    inner = ErrorInfo(type="ToolError", message="db: timeout: 30s")
    again = over_the_wire(RunFailed(inner))
    assert isinstance(again, RunFailed) and again.info == inner


def test_an_unknown_name_is_a_plain_relay_error() -> None:
    again = rebuild_error(ErrorInfo(type="NoSuchError", message="from a newer peer"))
    assert type(again) is RelayError and str(again) == "from a newer peer"
