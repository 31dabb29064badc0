"""The one exception tree of relaybus. Every layer raises a subclass of `RelayError`.

    RelayError
    ├── ConfigError                  a setting or RELAYBUS_* variable is wrong
    ├── ServerError                  the embedded nats-server is missing, too old or did not start
    ├── StackNotRunning              no NATS URL set and no `relaybus up` stack found
    ├── ConnectionFailed             could not reach NATS
    │   └── ServiceUnavailable       no process answers a service's subject (down or restarting)
    ├── SubjectInvalid               a subject or subject token would be unsafe to publish
    ├── EnvelopeInvalid              bytes that do not decode as an envelope (names the field)
    │   └── EnvelopeTooLarge         an envelope over the configured payload limit
    ├── ProvisioningConflict         a stream/consumer/bucket exists with a different config
    ├── PublishFailed                JetStream did not acknowledge a publish
    │   └── PermissionViolation      the server refused a subject for this connection
    ├── HandlerOutcome               raised by handlers to steer the consume loop
    │   ├── Retry                    nak with a delay: try again later
    │   ├── Reject                   terminate: never retry, dead-letter with the reason
    │   └── Abandon                  leave unacknowledged: another worker took the work over
    ├── RunFailed                    a run ended in failure (carries the remote error as data)
    ├── PermissionDenied             identity: a scope check refused an action
    ├── ChainInvalid                 identity: a delegation chain did not verify
    └── UpstreamFailed               an external API kept failing (after retries)

Each layer defines its own errors beside its code, as subclasses of RelayError:
`relaybus.services.ledger.errors` (BudgetExceeded, LedgerError, RateLimited),
`relaybus.memory.errors` (MemoryRefused), `relaybus.services.payments.errors` (PaymentRefused),
`relaybus.agents.errors` (DataRefused, CircuitOpen, LimitExceeded, ChildFailed, …).

Errors cross process boundaries as data (`ErrorInfo`: the class name, the message and the
error's own fields in `details`), never pickled, and never parsed back from their text: every
RelayError subclass, in any layer, registers itself by name when it is defined, and
`rebuild_error(info)` builds the same class from `info` (`from_info`, which a class with fields
overrides).
"""

from __future__ import annotations

from typing import Any

import msgspec

_KNOWN: dict[str, type[RelayError]] = {}


class RelayError(Exception):
    """Base class of every error relaybus raises on purpose."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _KNOWN.setdefault(cls.__name__, cls)  # the first class of a name keeps it

    def details(self) -> dict[str, str | int | float | bool]:
        """The error's fields, as they travel in `ErrorInfo.details`."""
        return {}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        """This error again, from what crossed the wire."""
        return cls(info.message)


def error_class(name: str) -> type[RelayError]:
    """The RelayError subclass registered under `name` (RelayError if none is)."""
    return _KNOWN.get(name, RelayError)


def rebuild_error(info: ErrorInfo) -> RelayError:
    """The exception `info` describes, of its own class and with its own fields."""
    return error_class(info.type).from_info(info)


class ConfigError(RelayError):
    """A setting is missing, misspelt or out of range."""


class ServerError(RelayError):
    """The nats-server binary is missing, too old, or exited while starting."""


class StackNotRunning(RelayError):
    """No NATS URL is configured and no running `relaybus up` stack was found."""


class ConnectionFailed(RelayError):
    """NATS could not be reached or the connection was lost for good."""


class ServiceUnavailable(ConnectionFailed):
    """No process answers a service's subject: it is down or restarting."""


class SubjectInvalid(RelayError, ValueError):
    """A subject token is empty, has whitespace, or holds a wildcard."""


class EnvelopeInvalid(RelayError, ValueError):
    """Bytes on the wire did not decode as an envelope; the message names the field."""


class EnvelopeTooLarge(EnvelopeInvalid):
    """An envelope is larger than the configured maximum payload."""


class ProvisioningConflict(RelayError):
    """A stream, consumer or KV bucket exists with a config that differs from the spec."""


class PublishFailed(RelayError):
    """JetStream did not store a message (no stream, timeout, server error)."""


class PermissionViolation(PublishFailed):
    """The NATS server refused a publish or subscribe for this connection's user."""


class HandlerOutcome(RelayError):
    """Raised by a handler to tell the consume loop what to do with the message."""


class Retry(HandlerOutcome):
    """Redeliver the message after `delay_s` seconds (counts as an attempt)."""

    def __init__(self, reason: str = "retry requested", delay_s: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class Reject(HandlerOutcome):
    """Do not retry: dead-letter the message with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Refused(Reject):
    """The message is not what it claims (forged sender, result, signal or chain): dead-letter
    it without a run event, since it says nothing true about the run it names."""


class Abandon(HandlerOutcome):
    """Neither ack nor nak: another replica took this work over (the journal fenced us)."""


class RunFailed(RelayError):
    """A run (or a child run) ended in failure; `info` carries the remote error."""

    def __init__(self, info: ErrorInfo) -> None:
        own = info.type == type(self).__name__  # a GatherTimeout need not say so twice
        super().__init__(info.message if own else f"{info.type}: {info.message}")
        self.info = info

    def details(self) -> dict[str, str | int | float | bool]:
        return {"failed_type": self.info.type, "failed_message": self.info.message}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        failed_type, failed_message = (
            info.details.get("failed_type"),
            info.details.get("failed_message"),
        )
        if isinstance(failed_type, str) and isinstance(failed_message, str):
            return cls(ErrorInfo(type=failed_type, message=failed_message))
        inner_type, _, inner_message = info.message.partition(": ")  # recorded before details
        return cls(ErrorInfo(type=inner_type, message=inner_message))


class PermissionDenied(RelayError):
    """An action was refused by a scope check; the message names the scope."""


class UpstreamFailed(RelayError):
    """An external API behind a tool kept failing after its retries; counts toward the tool's
    circuit breaker."""


TRACEBACK_CHARS = 8000  # a traceback's last lines are kept: where it failed


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An error as data, for events, dead letters and child results.

    `traceback`: where an unexpected exception (a handler bug, not a RelayError) was raised,
    kept in the task's journal, its run record and its dead letter, which its owner and the
    operators read; never on the shared events stream (`public()`)."""

    type: str
    message: str
    retryable: bool = False
    details: dict[str, str | int | float | bool] = {}  # the error's own fields (RelayError.details)
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException, *, with_traceback: bool = False) -> ErrorInfo:
        retryable = not isinstance(exc, Reject | EnvelopeInvalid)
        details = exc.details() if isinstance(exc, RelayError) else {}
        trace = ""
        if with_traceback and not isinstance(exc, RelayError):
            import traceback

            trace = "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:]
        return cls(
            type=type(exc).__name__,
            message=str(exc) or repr(exc),
            retryable=retryable,
            details=details,
            traceback=trace,
        )

    def public(self) -> ErrorInfo:
        """This error without its traceback, for the events stream and other agents."""
        return msgspec.structs.replace(self, traceback="") if self.traceback else self
