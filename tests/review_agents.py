"""Agents whose output is scored, and routed to human review below 0.5."""

from __future__ import annotations

from typing import Any

from relaybus.agents import Agent, Context
from relaybus.agents.evaluation import Check, ReviewPolicy


def quality(task: Any, result: Any) -> float:
    return float(result["quality"])


class Scored(Agent):
    name = "scored"
    evaluators = [Check("quality", quality)]
    review = ReviewPolicy(below=0.5)

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        return {"quality": task["q"], "answer": f"answer {task['q']}"}


class Other(Scored):
    name = "other_scored"
