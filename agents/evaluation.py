"""Evaluators: scores for what an agent produced, recorded on the run's trace and events.

    class Writer(Agent):
        name = "writer"
        evaluators = [
            Check("has_sections", lambda task, result: "## " in result["report"]),
            LLMJudge("Does the report compare at least two competitors?", on="run"),
        ]

`on="task"` scores every completed task of the agent; `on="run"` only the task whose result
ends the run. Scores (0..1) become `gen_ai.evaluation.result` span events, `evaluated`
events (read by `relaybus eval`) and the `relaybus.evaluation.score` histogram. An evaluator
that fails is recorded as such and never fails the task.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from relaybus.bus import Envelope, metrics, tracing

from .interceptors import Interceptor

if TYPE_CHECKING:
    from .context import Context
    from .llm.client import LLMClient

log = logging.getLogger("relaybus.evaluation")


@dataclass(frozen=True)
class Score:
    value: float  # 0..1
    label: str = ""
    explanation: str = ""


@dataclass(frozen=True)
class Evaluated:
    """What an evaluator looks at."""

    agent: str
    run_id: str
    task: Any
    result: Any
    llm: Callable[[], LLMClient]


@dataclass(frozen=True)
class ReviewPolicy:
    """When an agent's evaluated runs go to human review: any score below `below`, and a
    `sample` share (0..1) of the rest."""

    below: float | None = None
    sample: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample <= 1.0:
            raise ValueError(f"ReviewPolicy.sample={self.sample} must be between 0 and 1")

    def reason(self, name: str, score: float | None, draw: float) -> str:
        """Why this evaluation sends the run to review ('' if it does not)."""
        if score is None:
            return f"evaluator {name} failed"
        if self.below is not None and score < self.below:
            return f"{name} scored {score:.2f}, below {self.below:g}"
        if draw < self.sample:
            return f"sampled ({self.sample:.0%} of runs)"
        return ""


class Evaluator:
    name: str = "evaluator"
    on: Literal["task", "run"] = "task"

    async def evaluate(self, item: Evaluated) -> Score:
        raise NotImplementedError


class Check(Evaluator):
    """A task-completion check in code: `fn(task, result)` returns bool, a number or a Score."""

    def __init__(
        self, name: str, fn: Callable[[Any, Any], Any], *, on: Literal["task", "run"] = "task"
    ) -> None:
        self.name, self.fn, self.on = name, fn, on

    async def evaluate(self, item: Evaluated) -> Score:
        value = self.fn(item.task, item.result)
        if inspect.isawaitable(value):
            value = await value
        if isinstance(value, Score):
            return value
        if isinstance(value, bool):
            return Score(1.0 if value else 0.0, "pass" if value else "fail")
        return Score(float(value))


_JSON_OBJECT = re.compile(r"\{.*\}", re.S)

JUDGE_PROMPT = """You are grading an AI agent's output against one criterion.
Criterion: {criteria}
Reply with only a JSON object: {{"score": <number from 0 to 1>, "reason": "<one sentence>"}}."""


class LLMJudge(Evaluator):
    """LLM-as-judge through the configured LLM client (`RELAYBUS_LLM_*`). The agent's task and
    output go in a delimited data block in the user message, never in the system role."""

    def __init__(
        self,
        criteria: str,
        *,
        name: str = "llm_judge",
        on: Literal["task", "run"] = "task",
        model: str | None = None,
    ) -> None:
        self.criteria, self.name, self.on, self.model = criteria, name, on, model

    async def evaluate(self, item: Evaluated) -> Score:
        data = json.dumps({"task": item.task, "output": item.result}, default=str)
        reply = await item.llm().chat(
            [
                {"role": "system", "content": JUDGE_PROMPT.format(criteria=self.criteria)},
                {
                    "role": "user",
                    "content": f"<data>\n{data}\n</data>\nGrade the output inside <data>.",
                },
            ],
            model=self.model,
            max_tokens=200,
            run_id=item.run_id,
        )
        match = _JSON_OBJECT.search(reply.content)
        try:
            verdict = json.loads(match[0]) if match else {}
            score = float(verdict["score"])
        except (ValueError, TypeError, KeyError):
            raise ValueError(
                f"the judge's reply has no JSON score: {reply.content[:200]!r}"
            ) from None
        return Score(min(1.0, max(0.0, score)), "judge", str(verdict.get("reason", ""))[:500])


async def record_evaluations(worker: Any, env: Envelope, body: bytes) -> None:
    """Score a completed task with the agent's evaluators (run-level ones only when this
    task's result ends the run); a failing evaluator is recorded, never raised."""
    ends_run = not env.parent_id
    item = Evaluated(
        agent=worker.name,
        run_id=env.run_id,
        task=msgspec.json.decode(env.payload),
        result=msgspec.json.decode(body),
        llm=worker.llm_client,
    )
    span = trace.get_current_span()
    policy: ReviewPolicy | None = getattr(worker.agent, "review", None)
    routed, draw = False, random.random()  # one draw per task: a sample takes the whole task
    for evaluator in worker.agent.evaluators:
        if evaluator.on == "run" and not ends_run:
            continue
        with tracing.TRACER.start_as_current_span(
            f"gen_ai.evaluation {evaluator.name}",
            attributes={
                "openinference.span.kind": "EVALUATOR",  # how Phoenix and Arize know it
                "gen_ai.operation.name": "evaluation",
                "gen_ai.evaluation.name": evaluator.name,
                "gen_ai.agent.name": worker.name,
                "relaybus.run_id": env.run_id,
                "relaybus.task_id": env.id,
            },
        ) as evaluation:
            try:
                if evaluator.name == "human":
                    raise ValueError("the evaluator name 'human' is kept for people's verdicts")
                score: Score | None = await evaluator.evaluate(item)
                problem = ""
            except Exception as exc:
                score, problem = None, f"{type(exc).__name__}: {exc}"
                log.warning(
                    "evaluator %s failed on run %s: %s", evaluator.name, env.run_id, problem
                )
                evaluation.set_status(Status(StatusCode.ERROR, problem[:500]))
            if score is not None:
                evaluation.set_attribute("gen_ai.evaluation.score.value", score.value)
                evaluation.set_attribute("gen_ai.evaluation.score.label", score.label)
                if score.explanation:
                    evaluation.set_attribute("gen_ai.evaluation.explanation", score.explanation)
        attributes: dict[str, Any] = {"gen_ai.evaluation.name": evaluator.name}
        if score is not None:
            attributes["gen_ai.evaluation.score.value"] = score.value
            attributes["gen_ai.evaluation.score.label"] = score.label
            metrics.EVALUATIONS.record(
                score.value,
                {"evaluator": evaluator.name, "agent": worker.name},
            )
        explanation = problem or (score.explanation if score else "")
        if explanation:
            attributes["gen_ai.evaluation.explanation"] = explanation
        span.add_event("gen_ai.evaluation.result", attributes)
        review = (
            policy.reason(evaluator.name, score.value if score else None, draw) if policy else ""
        )
        review, routed = ("", routed) if routed else (review, bool(review))
        await worker.emit_event(
            env,
            "evaluated",
            detail=evaluator.name,
            score=score.value if score else None,
            result=msgspec.json.encode(
                {
                    "label": score.label if score else "error",
                    "explanation": explanation,
                    "on": evaluator.on,
                    **({"review": review} if review else {}),
                }
            ),
        )


class Evaluation(Interceptor):
    """Scores each completed task with the agent's evaluators (agents/interceptors.py)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    async def completed(self, ctx: Context, result: bytes) -> None:
        if self.worker.agent.evaluators:
            await record_evaluations(self.worker, ctx.envelope, result)
