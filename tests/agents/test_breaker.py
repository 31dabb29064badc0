import time

import pytest

from relaybus.agents.breaker import Breaker
from relaybus.agents.errors import CircuitOpen


def test_opens_after_n_consecutive_failures_then_half_opens_for_one_trial() -> None:
    breaker = Breaker("search", failures=3, reset_s=0.2)
    for _ in range(2):
        breaker.before()
        breaker.failure()
    breaker.before()
    breaker.success()  # a success resets the count
    for _ in range(3):
        breaker.before()
        breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen, match="tool search failed 3 times in a row"):
        breaker.before()
    time.sleep(0.25)
    assert breaker.state == "half-open"
    breaker.before()  # the one trial call
    with pytest.raises(CircuitOpen):
        breaker.before()  # no second call while the trial runs
    breaker.failure()  # the trial failed: open again
    assert breaker.state == "open"
    time.sleep(0.25)
    breaker.before()
    breaker.success()
    assert breaker.state == "closed"
    breaker.before()
