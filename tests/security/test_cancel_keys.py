"""A cancel names what it cancels: a run, or one task of one run; a run id chosen to match
another user's task id cancels nothing of theirs."""

from __future__ import annotations

from relaybus.agents.cancellation import Cancellations
from relaybus.bus import Subjects, new_envelope


def test_a_cancelled_run_id_does_not_cancel_a_task_of_that_id_in_another_run() -> None:
    known = Cancellations(Subjects("relay"))
    victim = new_envelope(
        kind="task", sender="user:b", recipient="a", payload=b"{}", run_id="victims-run"
    )
    # a run of its own, named after someone else's task id, cancelled by its owner
    known.learned(victim.id)
    assert not known.is_cancelled(victim)
    # a task cancelled in one run is not cancelled in another under the same id
    known.learned("other-run", victim.id)
    assert not known.is_cancelled(victim)
    known.learned(victim.run_id, victim.id)
    assert known.is_cancelled(victim)
