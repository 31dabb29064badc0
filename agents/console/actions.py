"""What the console changes: a pending signal approved or rejected, a dead letter replayed.

Each goes through the function its CLI command uses (`relaybus approve` → `send_signal`,
`relaybus dlq replay` → `replay_dead_letter`, `relaybus cancel` → `cancel_run`), after the
console's own check that the viewer may act on that run (a user only on runs whose principal
they are); every decision, allowed or refused, is appended to the audit stream under the run's
principal.

The verdict a run receives is set here from the button, never from request data: Approve sends
`true`, Reject sends `false` (what `ctx.wait_signal` callers and the payment approval read as
approved / rejected). A budget park (`budget-N`) resumes on any signal, so rejecting one cancels
the run instead of signalling it."""

from __future__ import annotations

from typing import Any

from relaybus.bus import Bus, ConnectionFailed, RelayError
from relaybus.bus import cli as bus_cli
from relaybus.services.identity.client import publish_audit
from relaybus.services.identity.messages import AuditRecord

from ..control import cancel_run, send_signal
from .access import Conflict, NotFound, Viewer
from .data import ConsoleData


async def _audit(
    bus: Bus, viewer: Viewer, action: str, decision: str, owner: str, **fields: Any
) -> None:
    principal = owner.removeprefix("user:") if owner else (viewer.user or "operator")
    await publish_audit(
        bus,
        AuditRecord(
            action=action, decision=decision, principal=principal, actor=viewer.actor, **fields
        ),
    )


BUDGET_PARK = "budget-"  # the worker's budget parks resume on any signal


def verdict(approve: bool) -> bool:
    """The signal data of a console decision: the button's verdict and nothing else."""
    return approve is True


async def decide(
    data: ConsoleData, viewer: Viewer, run_id: str, signal: str, *, approve: bool
) -> dict[str, Any]:
    """Approve (send `true`) or reject (send `false`) signal `signal` of a run that waits for
    it; rejecting a budget park cancels the run."""
    try:
        record = await data.record(viewer, run_id)
    except NotFound as exc:
        if viewer.user is not None:
            await _audit(data.bus, viewer, "run/signal", "deny", "", run_id=run_id, reason=str(exc))
        raise
    if signal not in record.pending_signals():
        waits = ", ".join(record.pending_signals()) or "nothing"
        raise Conflict(
            f"run {run_id} ({record.status}) does not wait for signal {signal!r}; it waits for {waits}"
        )
    sent = verdict(approve)
    done: dict[str, Any] = {"run_id": run_id, "signal": signal, "approved": sent}
    if not sent and signal.startswith(BUDGET_PARK):
        reason = f"budget park {signal} rejected by {viewer.actor} in the console"
        await cancel_run(data.bus, run_id, reason=reason)
        done.update(delivered=False, cancelled=True)
    else:
        delivered = await send_signal(data.bus, run_id, signal, sent, sender=viewer.actor)
        done.update(delivered=delivered, cancelled=False)
    await _audit(
        data.bus,
        viewer,
        "run/signal",
        "allow",
        record.submitted_by,
        run_id=run_id,
        detail={
            "signal": signal,
            "approved": sent,
            "verdict": "approve" if sent else "reject",
            "cancelled": done["cancelled"],
            "via": "console",
        },
    )
    return done


async def replay(data: ConsoleData, viewer: Viewer, seq: int) -> dict[str, Any]:
    """`relaybus dlq replay SEQ`, for a dead letter of a run the viewer may see."""
    try:
        letter = await bus_cli.read_dead_letter(data.bus, seq)
    except ConnectionFailed:
        raise
    except RelayError as exc:
        raise NotFound(str(exc)) from None
    owner = await data.owner_of(letter.run_id)
    if not viewer.sees(owner):
        await _audit(data.bus, viewer, "dlq/replay", "deny", "", run_id=letter.run_id)
        raise NotFound(f"no dead letter with id {seq}")
    row = await bus_cli.replay_dead_letter(data.bus, seq)
    await _audit(
        data.bus,
        viewer,
        "dlq/replay",
        "allow",
        owner,
        run_id=letter.run_id,
        detail={"dead_letter": seq, "agent": letter.agent, "via": "console"},
    )
    return row
