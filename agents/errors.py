"""Errors of the agent runtime (all RelayErrors, so they travel as ErrorInfo)."""

from __future__ import annotations

from relaybus.bus import ErrorInfo, PermissionDenied, RelayError, RunFailed, UpstreamFailed
from relaybus.bus.errors import rebuild_error
from relaybus.services.payments.errors import PaymentRefused


class LimitExceeded(RelayError):
    """A run limit (hops, steps, deadline) was reached or a handoff loop was detected."""


class ChildFailed(RunFailed):
    """A called or spawned child task failed; `info` carries its error."""


class GatherTimeout(RunFailed):
    """`gather` did not get enough results before its timeout."""


class Cancelled(RelayError):
    """The run (or this task) was cancelled."""


class SubmissionInvalid(RelayError, ValueError):
    """A submission's limit or option is not a value a run can carry; nothing was sent.
    `field` names it (`max_hops`, `deadline_s`, …), `value` is what was given."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        super().__init__(f"{field} must be {expected}, got {value!r}; nothing was submitted")
        self.field = field
        self.value = value


class ToolArgumentsInvalid(RelayError):
    """A tool was called with arguments that fail its schema; the message names the field."""


class DataRefused(RelayError):
    """A data tool refused a query or API call (or cut it off); the message says why and what
    to change. Not a tool failure: it does not trip the tool's circuit breaker."""


class _McpFields(RelayError):
    """An MCP error names the server and the tool."""

    def __init__(self, message: str, *, server: str = "", tool: str = "") -> None:
        super().__init__(message)
        self.server, self.tool = server, tool

    def details(self) -> dict[str, str | int | float | bool]:
        return {"server": self.server, "tool": self.tool}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        d = info.details
        return cls(info.message, server=str(d.get("server", "")), tool=str(d.get("tool", "")))


class McpToolError(_McpFields, DataRefused):
    """An MCP server answered a call with an error (its `isError`, or refused arguments): the
    model is told, the call is not charged and does not trip the breaker."""


class McpUnavailable(_McpFields, UpstreamFailed):
    """An MCP server could not be started or reached, dropped its session or did not answer in
    time; the next call opens a new session."""


class McpResultInvalid(_McpFields, UpstreamFailed):
    """An MCP server answered with something that is not a valid result (malformed, or not
    matching the tool's output schema)."""


class CircuitOpen(RelayError):
    """A tool failed too often in a row; calls are refused until its breaker half-opens."""


_REBUILD: dict[str, type[RunFailed]] = {"ChildFailed": ChildFailed, "GatherTimeout": GatherTimeout}
#: Refusals journaled as a tool call's outcome: a replay raises the same refusal again.
_REFUSALS: dict[str, type[RelayError]] = {
    "PermissionDenied": PermissionDenied,
    "DataRefused": DataRefused,
    "McpToolError": McpToolError,
    "PaymentRefused": PaymentRefused,
}


def rebuild(info: ErrorInfo) -> RelayError:
    """The exception a journaled error stands for, so a replay raises what the first run raised."""
    if info.type in _REBUILD or info.type in _REFUSALS:
        return rebuild_error(info)
    return RunFailed(info)
