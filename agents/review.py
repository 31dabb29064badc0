"""Human review beside automated evaluation: runs routed to a review queue, scored by people.

    class Writer(Agent):
        evaluators = [Check("covers every competitor", covers), LLMJudge("Is it accurate?")]
        review = ReviewPolicy(below=0.6, sample=0.05)   # low scores and 5% of the rest

A run lands in the queue when an evaluator scored it below `below`, when it was sampled, or on
demand (`relaybus review request RUN`, the console's button). Reviewers hold a `review` scope
(`evaluation/review`, or narrowed: `evaluation/review:agent=writer`,
`evaluation/review/read:principal=alice|bob` to read without scoring); they see and
score only the runs their scopes cover, from the console or `relaybus review`. A verdict
(pass/fail, a score 0..1, a label, a comment) sits beside the automated scores in `relaybus
eval`, on the run's trace and in the `relaybus.evaluation.score` metric (evaluator `human`).

Where it lives: routing is a flag on the agent's `evaluated` event; requests and verdicts are
keys of the `reviews` KV bucket, which only operator-credentialed processes (the console, the
CLI) may write: no agent can forge a human verdict.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from opentelemetry import trace

from relaybus.bus import Bus, PermissionDenied, RelayError, metrics
from relaybus.bus.feed import EventFeed
from relaybus.bus.kv import Bucket
from relaybus.services.identity.scopes import Scope, check, parse_scope

from .evaluation import ReviewPolicy
from .submit import run_store

__all__ = ["Item", "ReviewPolicy", "Reviewer", "Reviews", "Verdict"]

REVIEW_WINDOW_S = 7 * 86400.0  # the events stream keeps a week: so does the queue
DISAGREE_AT = 0.5  # judge and humans disagree when their scores differ by this much
_REVIEWER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ReviewError(RelayError):
    """A review request that cannot be honoured; the message says what to change."""


class ReviewNotFound(ReviewError):
    """No such run in review, or not one this reviewer's scopes cover (the same either way)."""


class Verdict(msgspec.Struct, kw_only=True, frozen=True):
    run_id: str
    reviewer: str  # `user:ID`, or `operator` (the local console / CLI without a user)
    verdict: Literal["pass", "fail"]
    score: float
    label: str = ""
    comment: str = ""
    time: float = msgspec.field(default_factory=time.time)


class Request(msgspec.Struct, kw_only=True, frozen=True):
    run_id: str
    by: str
    reason: str
    time: float = msgspec.field(default_factory=time.time)


@dataclass
class Item:
    """One run in the review queue, with what a reviewer needs to judge it."""

    run_id: str
    agent: str
    principal: str
    reasons: list[str] = field(default_factory=list)
    since: float = 0.0
    automated: dict[str, float | None] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    status: str = ""
    result: Any = None
    error: str | None = None

    @property
    def human(self) -> float | None:
        scores = [v.score for v in self.verdicts]
        return round(sum(scores) / len(scores), 4) if scores else None

    @property
    def disagreement(self) -> bool:
        """Judge and humans disagree: a human score far from the mean automated one."""
        auto = [s for s in self.automated.values() if s is not None]
        if self.human is None or not auto:
            return False
        return abs(self.human - sum(auto) / len(auto)) >= DISAGREE_AT

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "agent": self.agent,
            "principal": self.principal,
            "reasons": self.reasons,
            "since": self.since,
            "state": "reviewed" if self.verdicts else "pending",
            "automated": self.automated,
            "human": self.human,
            "disagreement": self.disagreement,
            "verdicts": [msgspec.to_builtins(v) for v in self.verdicts],
            "run_status": self.status,
            "result": self.result,
            "error": self.error,
        }


@dataclass(frozen=True)
class Reviewer:
    """Who reviews: `user` None is the local operator (reviews everything)."""

    user: str | None = None
    scopes: tuple[Scope, ...] = ()

    @classmethod
    def of(cls, user: str | None, scopes: list[str] | tuple[str, ...] = ()) -> Reviewer:
        return cls(user, tuple(parse_scope(s) for s in scopes))

    @property
    def name(self) -> str:
        return f"user:{self.user}" if self.user else "operator"

    def why_not(self, action: str, agent: str, principal: str) -> str:
        """'' when this reviewer's scopes cover `action` on a run of `agent` for `principal`."""
        if self.user is None:
            return ""
        args = {"agent": agent, "principal": principal.removeprefix("user:")}
        return check(self.scopes, action, args, self.user)


class Reviews:
    """The review queue and its verdicts, for the console and the CLI."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._bucket: Bucket | None = None

    async def bucket(self) -> Bucket:
        if self._bucket is None:
            self._bucket = await Bucket.open(self.bus, self.bus.subjects.bucket("reviews"))
        return self._bucket

    async def items(self, reviewer: Reviewer, *, since: float | None = None) -> list[Item]:
        """Every run in review this reviewer may see, newest first."""
        start = since if since is not None else time.time() - REVIEW_WINDOW_S
        found: dict[str, Item] = {}
        async with EventFeed(self.bus, kind="evaluated", since=start) as feed:
            events = await feed.stored()
        for event in events:
            item = found.setdefault(event.run_id, Item(event.run_id, event.recipient, ""))
            body = msgspec.json.decode(event.result) if len(event.result) else {}
            item.automated[event.detail] = event.score
            if body.get("review"):
                item.reasons.append(str(body["review"]))
                item.since = item.since or event.time
        bucket = await self.bucket()
        for key in await bucket.keys():
            kind, _, rest = key.partition(".")
            stored = await bucket.get(key)
            if stored is None:
                continue
            run_id = rest.split(".", 1)[0]
            item = found.setdefault(run_id, Item(run_id, "", ""))
            if kind == "req":
                request = msgspec.json.decode(stored[0], type=Request)
                item.reasons.append(f"requested by {request.by}: {request.reason}")
                item.since = min(item.since or request.time, request.time)
            elif kind == "verdict":
                item.verdicts.append(msgspec.json.decode(stored[0], type=Verdict))
        visible = []
        for item in found.values():
            if not item.reasons and not item.verdicts:
                continue  # scored, not routed to review
            if await self._fill(item) and not reviewer.why_not(
                "evaluation/review/read", item.agent, item.principal
            ):
                item.verdicts.sort(key=lambda v: v.time)
                visible.append(item)
        return sorted(visible, key=lambda i: i.since, reverse=True)

    async def verdicts(self) -> list[Verdict]:
        """Every recorded verdict, oldest first (for `relaybus eval`, an operator's view)."""
        bucket = await self.bucket()
        found = []
        for key in await bucket.keys():
            if key.startswith("verdict.") and (stored := await bucket.get(key)) is not None:
                found.append(msgspec.json.decode(stored[0], type=Verdict))
        return sorted(found, key=lambda v: v.time)

    async def item(self, reviewer: Reviewer, run_id: str) -> Item:
        for item in await self.items(reviewer, since=0.0):
            if item.run_id == run_id:
                return item
        raise ReviewNotFound(f"run {run_id} is not in review, or not one your review scopes cover")

    async def request(self, reviewer: Reviewer, run_id: str, reason: str) -> Request:
        """Put a run in the queue on demand (its owner, an operator, or a reviewer of it)."""
        record = await (await run_store(self.bus)).get(run_id)
        if record is None:
            raise ReviewNotFound(f"no run {run_id}")
        own = reviewer.user is not None and record.submitted_by == f"user:{reviewer.user}"
        problem = (
            ""
            if own
            else reviewer.why_not("evaluation/review/read", record.agent, record.submitted_by)
        )
        if problem:
            raise PermissionDenied(f"you may not send run {run_id} to review: {problem}")
        request = Request(run_id=run_id, by=reviewer.name, reason=_text(reason, 500, "reason"))
        key = f"req.{run_id}.{_key_part(reviewer.name)}"
        await (await self.bucket()).put(key, msgspec.json.encode(request))
        return request

    async def score(
        self,
        reviewer: Reviewer,
        run_id: str,
        verdict: str,
        *,
        score: float | None = None,
        label: str = "",
        comment: str = "",
    ) -> Verdict:
        """Record (or replace) this reviewer's verdict on a run in review."""
        if verdict not in ("pass", "fail"):
            raise ReviewError(f"verdict {verdict[:20]!r} must be pass or fail")
        value = (1.0 if verdict == "pass" else 0.0) if score is None else float(score)
        if not 0.0 <= value <= 1.0:
            raise ReviewError(f"score {score} must be between 0 and 1")
        item = await self.item(reviewer, run_id)
        problem = reviewer.why_not("evaluation/review/score", item.agent, item.principal)
        if problem:
            raise PermissionDenied(
                f"you may read run {run_id}'s review but not score it: {problem}"
            )
        recorded = Verdict(
            run_id=run_id,
            reviewer=reviewer.name,
            verdict="pass" if verdict == "pass" else "fail",
            score=value,
            label=_text(label, 64, "label"),
            comment=_text(comment, 2000, "comment"),
        )
        key = f"verdict.{run_id}.{_key_part(reviewer.name)}"
        await (await self.bucket()).put(key, msgspec.json.encode(recorded))
        attributes = {"gen_ai.evaluation.name": "human", "relaybus.agent": item.agent}
        metrics.EVALUATIONS.record(value, attributes)
        span = trace.get_tracer("relaybus.review").start_span(
            "gen_ai.evaluation human",
            attributes={"relaybus.run_id": run_id, "relaybus.reviewer": reviewer.name},
        )
        span.add_event(
            "gen_ai.evaluation.result",
            {
                "gen_ai.evaluation.name": "human",
                "gen_ai.evaluation.score.value": value,
                "gen_ai.evaluation.score.label": recorded.label or recorded.verdict,
                "gen_ai.evaluation.explanation": recorded.comment,
            },
        )
        span.end()
        return recorded

    async def _fill(self, item: Item) -> bool:
        """Complete `item` from its run record (False: no record, so nobody may review it)."""
        record = await (await run_store(self.bus)).get(item.run_id)
        if record is None:
            return False
        item.agent = item.agent or record.agent  # the agent whose output was scored
        item.principal = record.submitted_by
        item.status = record.status
        item.result = record.result
        item.error = f"{record.error.type}: {record.error.message}" if record.error else None
        return True


def _text(value: str, limit: int, name: str) -> str:
    if len(value) > limit:
        raise ReviewError(f"{name} is {len(value)} characters; at most {limit}")
    return value


def _key_part(reviewer: str) -> str:
    name = reviewer.removeprefix("user:")
    if not _REVIEWER.match(name):
        raise ReviewError(f"reviewer {name[:64]!r} is not a user id")
    return name
