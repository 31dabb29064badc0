"""Runtime messages inside envelope payloads and on control subjects (JSON)."""

from __future__ import annotations

from typing import Literal

import msgspec

from relaybus.bus import ErrorInfo


class ChildResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The payload of a result/error envelope: how child task `child` ended."""

    child: str
    ok: bool
    result: msgspec.Raw = msgspec.Raw()
    error: ErrorInfo | None = None


class SignalBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The payload of a signal envelope: a named signal with data, or a timer firing."""

    name: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")
    timer: str = ""
    due: float = 0.0


class Control(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """On `relay.control.<run>`: stop a run, or some of its tasks, everywhere now."""

    action: Literal["cancel", "cancel_tasks"]
    run_id: str
    tasks: list[str] = []
    reason: str = ""


signal_decoder = msgspec.json.Decoder(SignalBody)
control_decoder = msgspec.json.Decoder(Control)
