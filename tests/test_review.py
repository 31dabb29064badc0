"""Human review beside automated evaluation: low scores are routed to a queue; reviewers see
and score only what their `evaluation/review` scopes cover; verdicts sit beside the automated
scores in `relaybus eval`. Real nats-server, identity service, agent processes and CLI."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from relaybus.agents.review import Reviewer, ReviewError, ReviewNotFound, Reviews
from relaybus.agents.submit import submit
from relaybus.bus import Bus, PermissionDenied, Settings, default_topology, ensure
from relaybus.bus.feed import EventFeed
from relaybus.services.identity.client import IdentityClient, read_audit, write_agent_key

from .conftest import ROOT, Spawn, child_env, service_process, wait_service

USERS = {
    "ann": ["publish"],  # submits runs
    "rita": ["evaluation/review:agent=scored"],  # reviews the scored agent's runs only
    "rex": ["evaluation/review"],  # reviews everything
    "rod": ["evaluation/review/read:agent=scored"],  # reads, may not score
    "ola": ["publish"],  # no review scope at all
}


@dataclass
class Stack:
    bus: Bus
    settings: Settings
    tokens: dict[str, str]

    async def reviewer(self, user: str) -> Reviewer:
        name, scopes = await IdentityClient(self.bus).scopes_of(self.tokens[user])
        return Reviewer.of(name, scopes)

    async def run(self, agent: str, q: float) -> str:
        done = await submit(
            self.bus,
            agent,
            json.dumps({"q": q}).encode(),
            sender="user:ann",
            token=self.tokens["ann"],
            wait=True,
            timeout_s=60,
        )
        assert done.status == "completed", done.error
        await self.evaluated(str(done.run_id))
        return str(done.run_id)

    async def evaluated(self, run_id: str, within_s: float = 20.0) -> None:
        """Wait for the run's `evaluated` event: evaluators score a task after its result is
        published, so a caller that waited for the result may still be ahead of them."""
        deadline = asyncio.get_running_loop().time() + within_s
        while asyncio.get_running_loop().time() < deadline:
            async with EventFeed(self.bus, run_id, replay=True) as feed:
                if any(e.kind == "evaluated" for e in await feed.stored()):
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"run {run_id} was not evaluated within {within_s} s")


@pytest.fixture
async def stack(settings: Settings, spawn: Spawn) -> AsyncIterator[Stack]:
    base = settings.with_values(identity=True)
    with service_process(base, "identity"):
        async with Bus(base, name="test") as bus:
            await ensure(bus, default_topology(bus.subjects))
            await wait_service(bus, "identity")
            identity = IdentityClient(bus)
            for name in ("scored", "other_scored"):
                key = write_agent_key(settings.home.resolve(), name).verify_key
                await identity.add_agent(name, key, ["publish"], [])
            tokens = {}
            for user, scopes in USERS.items():
                await identity.add_user(user, scopes, [])
                tokens[user] = (await identity.issue_token(user))["token"]
            spawn("review_agents:Scored", **child_env(base))
            spawn("review_agents:Other", **child_env(base))
            yield Stack(bus, base, tokens)


async def cli(stack: Stack, *args: str, text: bool = False) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relaybus.cli", *args,
        env=child_env(stack.settings), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode() if text else json.loads(out)


async def test_low_scores_go_to_review_and_each_reviewer_sees_only_their_scope(
    stack: Stack,
) -> None:
    low = await stack.run("scored", 0.2)
    good = await stack.run("scored", 0.9)
    other_low = await stack.run("other_scored", 0.1)
    reviews = Reviews(stack.bus)
    # the operator sees every routed run; a run that scored well is not in the queue
    everything = {i.run_id: i for i in await reviews.items(Reviewer())}
    assert set(everything) == {low, other_low}
    assert everything[low].reasons == ["quality scored 0.20, below 0.5"]
    assert everything[low].automated == {"quality": 0.2}
    assert everything[low].result == {"quality": 0.2, "answer": "answer 0.2"}
    rita, rex, rod, ola = [await stack.reviewer(u) for u in ("rita", "rex", "rod", "ola")]
    assert [i.run_id for i in await reviews.items(rita)] == [low]
    assert {i.run_id for i in await reviews.items(rex)} == {low, other_low}
    assert [i.run_id for i in await reviews.items(rod)] == [low]
    assert await reviews.items(ola) == []
    # a reviewer cannot open, score or request what their scope does not cover
    with pytest.raises(ReviewNotFound):
        await reviews.item(rita, other_low)
    with pytest.raises(ReviewNotFound):
        await reviews.score(ola, low, "pass")
    with pytest.raises(PermissionDenied, match=r"may read run .* but not score it"):
        await reviews.score(rod, low, "fail")
    with pytest.raises(ReviewNotFound, match="you may send to review"):  # as if it did not exist
        await reviews.request(rita, other_low, "looks wrong")
    with pytest.raises(ReviewNotFound, match="you may send to review"):
        await reviews.request(rita, "01NOSUCHRUN0000000000000000", "looks wrong")
    assert await reviews.verdicts() == []
    # every refusal of a run in review is audited under the run's owner, naming the reviewer
    denied = await read_audit(stack.bus, "ann", decision="deny")
    assert sorted((d.action, d.actor, d.run_id) for d in denied) == sorted(
        [
            ("evaluation/review/read", "user:rita", other_low),
            ("evaluation/review/score", "user:rod", low),
            ("evaluation/review/request", "user:rita", other_low),
        ]
    )
    del good


async def test_a_verdict_sits_beside_the_automated_scores_and_disagreement_shows(
    stack: Stack,
) -> None:
    low = await stack.run("scored", 0.2)
    reviews = Reviews(stack.bus)
    rita = await stack.reviewer("rita")
    with pytest.raises(ReviewError, match=r"score 1\.5 must be between 0 and 1"):
        await reviews.score(rita, low, "pass", score=1.5)
    with pytest.raises(ReviewError, match="must be pass or fail"):
        await reviews.score(rita, low, "maybe")
    verdict = await reviews.score(rita, low, "pass", label="accurate", comment="fine for me")
    assert verdict.reviewer == "user:rita" and verdict.score == 1.0
    # a second verdict of the same reviewer replaces the first; another reviewer's adds
    await reviews.score(rita, low, "pass", score=0.9, label="accurate")
    await reviews.score(await stack.reviewer("rex"), low, "pass", score=0.8)
    item = await reviews.item(rita, low)
    assert sorted((v.reviewer, v.score) for v in item.verdicts) == [
        ("user:rex", 0.8),
        ("user:rita", 0.9),
    ]
    assert item.human == 0.85 and item.disagreement  # judged 0.2, humans 0.85
    # relaybus eval: the human scores beside the automated one, flagged
    report = await cli(stack, "eval", low, "--json")
    rows = {(r["evaluator"], r["score"]) for r in report["evaluations"]}
    assert rows == {("quality", 0.2), ("human", 0.9), ("human", 0.8)}
    assert all(r["disagrees"] for r in report["evaluations"] if r["evaluator"] == "human")
    assert report["summary"]["human"]["count"] == 2
    # and the CLI reviewer: rita has reviewed it, so her queue is empty; with --all it is there
    mine = await cli(
        stack, "review", "list", "--as", "rita", "--token", stack.tokens["rita"], "--json"
    )
    assert mine == []
    listed = await cli(
        stack, "review", "list", "--all", "--as", "rita", "--token", stack.tokens["rita"], "--json"
    )
    assert [(r["run_id"], r["disagreement"]) for r in listed] == [(low, True)]


async def test_a_run_is_sent_to_review_on_demand_by_its_owner_or_a_reviewer(stack: Stack) -> None:
    good = await stack.run("scored", 0.9)
    reviews = Reviews(stack.bus)
    assert await reviews.items(Reviewer()) == []
    ann = await stack.reviewer("ann")  # the run's owner holds no review scope but may ask
    await reviews.request(ann, good, "the customer complained")
    (item,) = await reviews.items(await stack.reviewer("rex"))
    assert item.run_id == good and item.reasons == [
        "requested by user:ann: the customer complained"
    ]
    with pytest.raises(ReviewNotFound):  # asking for a review does not make ann a reviewer
        await reviews.item(ann, good)
    ola = await stack.reviewer("ola")
    with pytest.raises(ReviewNotFound):
        await reviews.request(ola, good, "curious")
    done = await cli(
        stack, "review", "score", good, "fail", "--score", "0.1", "--comment", "wrong price",
        "--as", "rex", "--token", stack.tokens["rex"], "--json",
    )  # fmt: skip
    assert done == {"run_id": good, "reviewer": "user:rex", "verdict": "fail", "score": 0.1}
    (item,) = await reviews.items(Reviewer())
    assert item.disagreement  # judged 0.9, the human 0.1
    # without --json a person reads sentences and JSON, not Python's repr of a dict
    shown = await cli(stack, "review", "show", good, text=True)
    assert '"answer": "answer 0.9"' in shown and "{'" not in shown, shown
    again = await cli(stack, "review", "score", good, "pass", "--score", "0.7", text=True)
    assert again == f"run {good}: pass 0.70 by operator\n"


def test_no_agent_ingress_or_service_may_write_the_reviews_bucket() -> None:
    from relaybus.bus import Subjects
    from relaybus.services.identity.messages import AgentRecord
    from relaybus.services.identity.natsconfig import (
        agent_permissions,
        client_permissions,
        service_permissions,
    )

    subjects = Subjects("relay")
    reviews = f"$KV.{subjects.bucket('reviews')}.>"
    record = AgentRecord(name="a", public_key="00")
    agent = agent_permissions(subjects, record, [record])["publish"]
    assert not any(s.startswith("$KV.") and "reviews" in s for s in agent["allow"])  # type: ignore[index]
    assert not any("reviews" in s for s in client_permissions(subjects)["publish"]["allow"])  # type: ignore[index]
    for service in ("ingress", "ledger", "memory"):
        denied = service_permissions(subjects, service)["publish"]["deny"]  # type: ignore[index]
        assert reviews in denied, service


async def test_an_agent_cannot_route_score_or_steer_review_of_a_run_it_is_not_part_of(
    stack: Stack,
) -> None:
    """Events are another party's data: an agent can publish `evaluated` events under its own
    name for any run id it knows. Only the run's own agents, each about itself, count."""
    good = await stack.run("scored", 0.9)  # scored well: not in review
    reviews = Reviews(stack.bus)
    subjects = stack.bus.subjects

    async def forge(source: str, body: dict[str, Any]) -> None:
        event = {"run_id": good, "kind": "evaluated", "detail": "quality", "score": 0.0, **body}
        await stack.bus.publish_bytes(
            subjects.event(good, "evaluated", source), json.dumps(event).encode()
        )

    # an outsider claims to be the run's agent, flags the run and scores it 0
    await forge("other_scored", {"to": "scored", "result": {"review": "forged by an outsider"}})
    await forge("other_scored", {"to": "other_scored", "result": {"review": "me too"}})
    # the run's own agent: a malformed body, and a score under the name kept for people
    await forge("scored", {"to": "scored", "detail": "format", "score": 0.5, "result": [1]})
    await forge(
        "scored", {"to": "scored", "detail": "human", "score": 1.0, "result": {"review": "x"}}
    )
    rex = await stack.reviewer("rex")
    assert await reviews.items(Reviewer()) == [] and await reviews.items(rex) == []
    with pytest.raises(ReviewNotFound):
        await reviews.item(rex, good)
    # once really in review, the outsider's scores are not among the automated ones
    await reviews.request(await stack.reviewer("ann"), good, "check it")
    item = await reviews.item(rex, good)
    assert item.automated == {"quality": 0.9, "format": 0.5} and item.scored == ["scored"]
    # the refusal is audited (not in review: under the one who asked)
    denied = await read_audit(stack.bus, "rex", run_id=good, decision="deny")
    assert [(d.action, d.actor) for d in denied] == [("evaluation/review/read", "user:rex")]
    report = await cli(stack, "eval", good, "--json")  # the malformed event does not break eval
    assert "human" not in report["summary"]
