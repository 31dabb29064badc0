"""Run records, as the runtime and the CLI see them (services/runs owns them)."""

from relaybus.services.runs.store import TERMINAL_RUN, NoRun, RunRecord, RunStatus, RunStore, Waiter

__all__ = ["TERMINAL_RUN", "NoRun", "RunRecord", "RunStatus", "RunStore", "Waiter"]
