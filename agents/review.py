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

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from relaybus.bus import Bus, Event, PermissionDenied, RelayError, metrics, tracing
from relaybus.bus.feed import EventFeed, from_the_run
from relaybus.bus.kv import Bucket
from relaybus.bus.subjects import check_name
from relaybus.services.identity.client import publish_audit
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.identity.scopes import Scope, check, covers_path, parse_scope

from .evaluation import ReviewPolicy
from .submit import run_store

__all__ = ["Item", "ReviewPolicy", "Reviewer", "Reviews", "Verdict"]

REVIEW_WINDOW_S = 7 * 86400.0  # the events stream keeps a week: so does the queue
MAX_LISTED = 200  # runs a queue listing shows (the newest)
HUMAN = "human"  # the evaluator name of people's verdicts; reserved
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
    scored: list[str] = field(default_factory=list)  # the run's agents that were evaluated
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
            "scored_agents": self.scored,
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

    @property
    def reviews_anything(self) -> bool:
        """Holds some `evaluation/review` scope (else the queue is empty for them, unread)."""
        return self.user is None or any(
            covers_path(s.path, "evaluation/review/read") for s in self.scopes
        )

    def why_not(self, action: str, item: Item) -> str:
        """'' when this reviewer's scopes cover `action` on the run: its owner, and its entry
        agent or one of its scored agents."""
        if self.user is None:
            return ""
        reasons = []
        for agent in dict.fromkeys([item.agent, *item.scored]):
            args = {"agent": agent, "principal": item.principal.removeprefix("user:")}
            problem = check(self.scopes, action, args, self.user)
            if not problem:
                return ""
            reasons.append(problem)
        return reasons[0]


class Reviews:
    """The review queue and its verdicts, for the console and the CLI. What counts as an
    evaluation is what the run's own agents published under their own names (an agent outside
    the run cannot add scores or review flags to it); requests and verdicts come from the
    `reviews` bucket, which only operator-credentialed processes write. Every refusal is
    audited under the run's owner."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._bucket: Bucket | None = None

    async def bucket(self) -> Bucket:
        if self._bucket is None:
            self._bucket = await Bucket.open(self.bus, self.bus.subjects.bucket("reviews"))
        return self._bucket

    async def items(self, reviewer: Reviewer, *, since: float | None = None) -> list[Item]:
        """The runs in review this reviewer may see (newest first, at most MAX_LISTED)."""
        if not reviewer.reviews_anything:
            return []
        start = since if since is not None else time.time() - REVIEW_WINDOW_S
        candidates: dict[str, float] = {}  # run → when it entered review, as far as known
        async with EventFeed(self.bus, kind="evaluated", since=start) as feed:
            for event in await feed.stored():
                if _flag(event.result):
                    candidates.setdefault(event.run_id, event.time)
        for key, value in await self._entries():
            stored = msgspec.json.decode(value)
            when = float(stored.get("time", 0.0)) if isinstance(stored, dict) else 0.0
            run_id = key.split(".")[1]
            candidates[run_id] = min(candidates.get(run_id, when), when)
        newest = sorted(candidates, key=lambda r: candidates[r], reverse=True)[:MAX_LISTED]
        visible = []
        for run_id in newest:
            item = await self._load(run_id)
            if item is not None and not reviewer.why_not("evaluation/review/read", item):
                visible.append(item)
        return visible

    async def item(self, reviewer: Reviewer, run_id: str) -> Item:
        """One run in review; ReviewNotFound (audited) when it is not, or not for this reviewer."""
        check_name("run", run_id)  # before it names a key: a huge one ended the connection
        item = await self._load(run_id) if reviewer.reviews_anything else None
        problem = "" if item else "not in review"
        if item is not None:
            problem = reviewer.why_not("evaluation/review/read", item)
        if problem:
            await self._audit(reviewer, "evaluation/review/read", "deny", item, run_id, problem)
            raise ReviewNotFound(
                f"run {run_id} is not in review, or not one your review scopes cover (an "
                "operator grants them: evaluation/review, narrowed by agent= or principal=)"
            )
        assert item is not None
        return item

    async def verdicts(self, run_id: str | None = None) -> list[Verdict]:
        """Recorded verdicts (of one run, or all), oldest first; an operator's view."""
        found = [
            msgspec.json.decode(value, type=Verdict)
            for key, value in await self._entries(run_id)
            if key.startswith("verdict.")
        ]
        return sorted(found, key=lambda v: v.time)

    async def request(self, reviewer: Reviewer, run_id: str, reason: str) -> Request:
        """Put a run in the queue on demand: by its owner, an operator, or one who may review
        it. Anyone else learns nothing, not even that the run exists."""
        check_name("run", run_id)
        record = await (await run_store(self.bus)).get(run_id)
        own = record is not None and reviewer.user is not None
        own = own and record is not None and record.submitted_by == f"user:{reviewer.user}"
        problem = "no such run" if record is None else ""
        if record is not None and not own:
            probe = Item(run_id, record.agent, record.submitted_by)
            probe.scored = await self._scored_agents(run_id, record.agent)
            problem = reviewer.why_not("evaluation/review/read", probe)
        if problem:
            owner = record.submitted_by if record is not None else ""
            await self._audit(
                reviewer, "evaluation/review/request", "deny", None, run_id, problem, owner
            )
            raise ReviewNotFound(
                f"no run {run_id} you may send to review (its owner or a reviewer of it can)"
            )
        request = Request(run_id=run_id, by=reviewer.name, reason=_text(reason, 500, "reason"))
        key = f"req.{run_id}.{_key_part(reviewer)}"
        await (await self.bucket()).put(key, msgspec.json.encode(request))
        owner = record.submitted_by if record is not None else ""
        await self._audit(reviewer, "evaluation/review/request", "allow", None, run_id, "", owner)
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
        check_name("run", run_id)
        if verdict not in ("pass", "fail"):
            raise ReviewError(f"verdict {verdict[:20]!r} must be pass or fail")
        value = (1.0 if verdict == "pass" else 0.0) if score is None else float(score)
        if not 0.0 <= value <= 1.0:
            raise ReviewError(f"score {score} must be between 0 and 1")
        item = await self.item(reviewer, run_id)
        problem = reviewer.why_not("evaluation/review/score", item)
        if problem:
            await self._audit(reviewer, "evaluation/review/score", "deny", item, run_id, problem)
            raise PermissionDenied(
                f"you may read run {run_id}'s review but not score it: {problem}; scoring needs "
                "evaluation/review or evaluation/review/score"
            )
        recorded = Verdict(
            run_id=run_id,
            reviewer=reviewer.name,
            verdict="pass" if verdict == "pass" else "fail",
            score=value,
            label=_text(label, 64, "label"),
            comment=_text(comment, 2000, "comment"),
        )
        key = f"verdict.{run_id}.{_key_part(reviewer)}"
        await (await self.bucket()).put(key, msgspec.json.encode(recorded))
        await self._audit(reviewer, "evaluation/review/score", "allow", item, run_id, "")
        _observe(recorded, item.agent)
        return recorded

    # -- reading -----------------------------------------------------------------------------

    async def _entries(self, run_id: str | None = None) -> list[tuple[str, bytes]]:
        """Requests and verdicts in the bucket (of one run), as (key, value)."""
        bucket = await self.bucket()
        out = []
        for key in await bucket.keys():
            parts = key.split(".")
            if len(parts) != 3 or (run_id is not None and parts[1] != run_id):
                continue
            stored = await bucket.get(key)
            if stored is not None:
                out.append((key, stored[0]))
        return out

    async def _load(self, run_id: str) -> Item | None:
        """The run as a review item, from its record, the evaluations its own agents published
        and the bucket's entries; None when it has no record or is not in review."""
        record = await (await run_store(self.bus)).get(run_id)
        if record is None:
            return None
        item = Item(run_id, record.agent, record.submitted_by, status=record.status)
        item.result = record.result
        item.error = f"{record.error.type}: {record.error.message}" if record.error else None
        for event in await self._evaluations(run_id, record.agent):
            item.scored.append(event.recipient)
            item.automated[event.detail] = event.score
            if reason := _flag(event.result):
                item.reasons.append(reason)
                item.since = item.since or event.time
        for key, value in await self._entries(run_id):
            if key.startswith("req."):
                request = msgspec.json.decode(value, type=Request)
                item.reasons.append(f"requested by {request.by}: {request.reason}")
                item.since = min(item.since or request.time, request.time)
            else:
                item.verdicts.append(msgspec.json.decode(value, type=Verdict))
        if not item.reasons and not item.verdicts:
            return None
        item.scored = list(dict.fromkeys(item.scored))
        item.verdicts.sort(key=lambda v: v.time)
        return item

    async def _evaluations(self, run_id: str, entry: str) -> list[Event]:
        """`evaluated` events of agents that took part in the run, each about itself."""
        async with EventFeed(self.bus, run_id, replay=True) as feed:
            sourced = await feed.stored_sourced()
        own = {id(e) for e in from_the_run(sourced, entry)}
        return [
            e
            for e, source in sourced
            if e.kind == "evaluated"
            and id(e) in own
            and source
            and source == e.recipient
            and e.detail != HUMAN
        ]

    async def _scored_agents(self, run_id: str, entry: str) -> list[str]:
        return list(dict.fromkeys(e.recipient for e in await self._evaluations(run_id, entry)))

    async def _audit(
        self,
        reviewer: Reviewer,
        action: str,
        decision: str,
        item: Item | None,
        run_id: str,
        reason: str,
        owner: str = "",
    ) -> None:
        principal = (item.principal if item else owner) or reviewer.name
        with contextlib.suppress(RelayError):  # a stack without an audit stream (identity off)
            await publish_audit(
                self.bus,
                AuditRecord(
                    action=action,
                    decision=decision,
                    principal=principal.removeprefix("user:"),
                    actor=reviewer.name,
                    reason=reason,
                    run_id=run_id,
                ),
            )


def _flag(result: msgspec.Raw) -> str:
    """The review reason an `evaluated` event carries ('' for none, or a malformed body)."""
    try:
        body = msgspec.json.decode(result) if len(result) else {}
    except msgspec.DecodeError:
        return ""
    reason = body.get("review") if isinstance(body, dict) else None
    return str(reason)[:500] if reason else ""


def _observe(verdict: Verdict, agent: str) -> None:
    """A verdict as a metric sample and a `gen_ai.evaluation human` span."""
    metrics.EVALUATIONS.record(verdict.score, {"evaluator": HUMAN, "agent": agent})
    span = tracing.start_run_root(  # in the run's trace (as its runs' own roots are)
        "gen_ai.evaluation human",
        verdict.run_id,
        attributes={
            "openinference.span.kind": "EVALUATOR",
            "gen_ai.evaluation.name": HUMAN,
            "gen_ai.evaluation.score.value": verdict.score,
            "gen_ai.evaluation.score.label": verdict.label or verdict.verdict,
            "relaybus.run_id": verdict.run_id,
            "relaybus.reviewer": verdict.reviewer,
        },
    )
    span.add_event(
        "gen_ai.evaluation.result",
        {
            "gen_ai.evaluation.name": HUMAN,
            "gen_ai.evaluation.score.value": verdict.score,
            "gen_ai.evaluation.score.label": verdict.label or verdict.verdict,
            "gen_ai.evaluation.explanation": verdict.comment,
        },
    )
    span.end()


def _text(value: str, limit: int, name: str) -> str:
    if len(value) > limit:
        raise ReviewError(f"{name} is {len(value)} characters; at most {limit}")
    return value


def _key_part(reviewer: Reviewer) -> str:
    """The reviewer's part of a bucket key: a user id, or `=operator` (no user id holds `=`)."""
    if reviewer.user is None:
        return "=operator"
    if not _REVIEWER.match(reviewer.user):
        raise ReviewError(f"reviewer {reviewer.user[:64]!r} is not a user id")
    return reviewer.user
