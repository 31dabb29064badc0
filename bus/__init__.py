"""relaybus's ground floor: settings, the embedded server, the connection, the wire and the loop."""

if __name__ != "relaybus.bus":  # the checkout's folder imported by its own name
    raise ImportError(
        "relaybus's bus/ folder is the package relaybus.bus: import relaybus.bus, "
        "not bus (`from relaybus import ...`; run its modules as `python -m relaybus.bus...`)"
    )

from .client import Bus
from .consumer import Consumer, Delivery, Handler, RetryPolicy, backoff_s
from .envelope import Envelope, Link, decode, encode, from_message, new_envelope, to_message
from .errors import (
    Abandon,
    ConfigError,
    ConnectionFailed,
    EnvelopeInvalid,
    EnvelopeTooLarge,
    ErrorInfo,
    HandlerOutcome,
    PermissionDenied,
    PermissionViolation,
    ProvisioningConflict,
    PublishFailed,
    Refused,
    Reject,
    RelayError,
    Retry,
    RunFailed,
    ServerError,
    ServiceUnavailable,
    StackNotRunning,
    SubjectInvalid,
    UpstreamFailed,
)
from .events import DeadLetter, Event
from .ids import new_id
from .server import NatsServer
from .settings import LayerSettings, Settings
from .streams import Topology, default_topology, ensure
from .subjects import Subjects

__all__ = [
    "Abandon",
    "Bus",
    "ConfigError",
    "ConnectionFailed",
    "Consumer",
    "DeadLetter",
    "Delivery",
    "Envelope",
    "EnvelopeInvalid",
    "EnvelopeTooLarge",
    "ErrorInfo",
    "Event",
    "Handler",
    "HandlerOutcome",
    "LayerSettings",
    "Link",
    "NatsServer",
    "PermissionDenied",
    "PermissionViolation",
    "ProvisioningConflict",
    "PublishFailed",
    "Refused",
    "Reject",
    "RelayError",
    "Retry",
    "RetryPolicy",
    "RunFailed",
    "ServerError",
    "ServiceUnavailable",
    "Settings",
    "StackNotRunning",
    "SubjectInvalid",
    "Subjects",
    "Topology",
    "UpstreamFailed",
    "backoff_s",
    "decode",
    "default_topology",
    "encode",
    "ensure",
    "from_message",
    "new_envelope",
    "new_id",
    "to_message",
]
