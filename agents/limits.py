"""Run limits checked by the runtime before a task starts: deadline, hops, handoff loops."""

from __future__ import annotations

import time

from relaybus.bus import Envelope

LOOP_REPEATS = 4
MAX_CYCLE = 4


def find_loop(trail: tuple[str, ...]) -> tuple[str, ...] | None:
    """The cycle the end of `trail` repeats LOOP_REPEATS times (A→B→A→B→A→B), if any."""
    for size in range(1, MAX_CYCLE + 1):
        span = size * LOOP_REPEATS
        if len(trail) < span:
            break
        tail = trail[-span:]
        if all(tail[i] == tail[i + size] for i in range(span - size)):
            return tail[:size]
    return None


def limit_problem(env: Envelope, agent: str) -> str:
    """Why this task must not start, or '' if it may."""
    if env.deadline and time.time() > env.deadline:
        return f"deadline passed before {agent} started"
    if env.hop > env.max_hops:
        return f"hop limit {env.max_hops} reached at {agent} (hop {env.hop})"
    cycle = find_loop((*env.trail, agent))
    if cycle is not None:
        path = " → ".join((*cycle, *cycle, cycle[0]))
        return f"handoff loop detected: {path} … repeated {LOOP_REPEATS} times"
    return ""
