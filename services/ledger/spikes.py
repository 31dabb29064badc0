"""A payer's spend over the last eleven minutes, kept in O(1) per capture: the last minute, and
the ten before it (the baseline a spike is measured against)."""

from __future__ import annotations

from collections import deque

SPIKE_WINDOW_S = 60.0
BASELINE_WINDOWS = 10


class SpendWindow:
    def __init__(self) -> None:
        self.recent: deque[tuple[float, int]] = deque()  # within the last minute
        self.older: deque[tuple[float, int]] = deque()  # the ten minutes before it
        self.recent_sum = 0
        self.older_sum = 0

    def add(self, at: float, amount: int) -> None:
        self.recent.append((at, amount))
        self.recent_sum += amount
        while self.recent and self.recent[0][0] <= at - SPIKE_WINDOW_S:
            moved = self.recent.popleft()
            self.recent_sum -= moved[1]
            self.older.append(moved)
            self.older_sum += moved[1]
        horizon = at - (BASELINE_WINDOWS + 1) * SPIKE_WINDOW_S
        while self.older and self.older[0][0] <= horizon:
            self.older_sum -= self.older.popleft()[1]

    def history_minutes(self, at: float) -> float:
        """How many minutes of history lie before the last minute."""
        first = self.older[0][0] if self.older else self.recent[0][0]
        return (at - SPIKE_WINDOW_S - first) / SPIKE_WINDOW_S

    def baseline(self, at: float) -> float:
        """The average minute over the ten before the last one (or what history there is)."""
        return self.older_sum / min(float(BASELINE_WINDOWS), self.history_minutes(at))
