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


class SpendSpikes:
    """Every payer's spend window; `captured` says when a capture makes a spike: the payer's
    spend in the last minute above `multiple` times its average minute over the ten before
    (with at least five minutes of history), at most once a minute per payer."""

    def __init__(self, multiple: float) -> None:
        self.multiple = multiple
        self._windows: dict[str, SpendWindow] = {}
        self._alerted: dict[str, float] = {}

    def captured(self, payer: str, amount: int, at: float) -> tuple[str, int] | None:
        """The alert's text and the last minute's spend, if this capture makes a spike."""
        window = self._windows.get(payer)
        if window is None:
            window = self._windows[payer] = SpendWindow()
        window.add(at, amount)
        recent = window.recent_sum
        if window.history_minutes(at) < 5:  # no baseline yet: alert against 5 minutes or more
            return None
        baseline = window.baseline(at)
        if (
            baseline <= 0
            or recent <= self.multiple * baseline
            or at - self._alerted.get(payer, 0.0) < SPIKE_WINDOW_S
        ):
            return None
        self._alerted[payer] = at
        detail = (
            f"spend spike: {payer} spent {recent} in the last minute, "
            f"{recent / baseline:.1f}x its {baseline:.0f}/min baseline"
        )
        return detail, recent
