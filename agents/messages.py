"""Runtime messages inside envelope payloads and on control subjects (JSON)."""

from __future__ import annotations

import msgspec

from relaybus.bus import ErrorInfo


class ChildResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The payload of a result/error envelope: how child task `child` ended."""

    child: str
    ok: bool
    result: msgspec.Raw = msgspec.Raw()
    error: ErrorInfo | None = None


class Signal(msgspec.Struct, frozen=True, kw_only=True, tag="signal"):
    """A named signal (an approval, a rejection, a budget resume) with its JSON data."""

    name: str
    data: msgspec.Raw = msgspec.Raw(b"null")


class TimerFired(msgspec.Struct, frozen=True, kw_only=True, tag="timer"):
    """A durable timer, due at `due` (epoch seconds); redelivered until then."""

    timer: str
    due: float


#: The payload of a signal envelope, tagged by `type`.
SignalBody = Signal | TimerFired


class CancelRun(msgspec.Struct, frozen=True, kw_only=True, tag="cancel"):
    """Stop every task of the run now (an operator's `relaybus cancel`)."""

    run_id: str
    reason: str = ""


class StopTasks(msgspec.Struct, frozen=True, kw_only=True, tag="cancel_tasks"):
    """Stop these tasks of the run (stragglers of a quorum `gather`), sent by their parent."""

    run_id: str
    tasks: list[str]


#: On `<prefix>.control.<run>[.<agent>]`, tagged by `type`.
Control = CancelRun | StopTasks


signal_decoder: msgspec.json.Decoder[SignalBody] = msgspec.json.Decoder(SignalBody)
control_decoder: msgspec.json.Decoder[Control] = msgspec.json.Decoder(Control)
