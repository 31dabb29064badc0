"""Agents for the runtime tests, run as real processes (PYTHONPATH=tests)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import msgspec
import pydantic

from relaybus.agents import Agent, ChildFailed, Context, tool


def append(path: str, line: str) -> int:
    with open(path, "a") as f:
        f.write(line + "\n")
    with open(path) as f:
        return len(f.read().splitlines())


class Effect(msgspec.Struct):
    effects: str
    sink: str


class Effector(Agent):
    """A side effect, then a handoff. The first attempt stalls after the effect (to be killed)."""

    name = "effector"

    async def handle(self, ctx: Context, task: Effect) -> None:
        await ctx.step("charge", append, task.effects, f"charged by {os.getpid()}")
        if ctx.attempt == 1:
            await asyncio.sleep(60)  # kill -9 lands here: after the effect, before the ack
        await ctx.handoff("sink", {"log": task.sink})


class Sink(Agent):
    name = "sink"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, int]:
        return {"sink_runs": await ctx.step("record", append, task["log"], "sink")}


class Child(Agent):
    """Doubles x after a delay (or a cue); records each execution; `fail` makes it fail for
    good."""

    name = "child"

    class Input(msgspec.Struct):
        x: int
        log: str = ""
        sleep_s: float = 0.0
        fail: bool = False
        go: str = ""  # a file: answer only once the test puts it down

    async def handle(self, ctx: Context, task: Child.Input) -> int:
        if task.log:
            await ctx.step("record", append, task.log, str(task.x))
        for _ in range(3000 if task.go else 0):  # bounded: 60 s
            if Path(task.go).exists():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(task.sleep_s)
        if task.fail:
            from relaybus.bus import Reject

            raise Reject(f"child {task.x} cannot do this")
        return task.x * 2


class FanOut(Agent):
    """Spawns one child per item and gathers (optionally a quorum with a timeout)."""

    name = "fanout"

    class Input(msgspec.Struct):
        items: list[dict[str, Any]]
        quorum: int | None = None
        timeout: float | None = None

    async def handle(self, ctx: Context, task: FanOut.Input) -> dict[str, Any]:
        handles = [ctx.spawn("child", item) for item in task.items]
        try:
            results = await ctx.gather(*handles, quorum=task.quorum, timeout=task.timeout)
        except ChildFailed as exc:
            return {"child_failed": {"type": exc.info.type, "message": exc.info.message}}
        return {"results": results}


class Approver(Agent):
    name = "approver"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        decision = await ctx.wait_signal("approval")
        return {"approved": decision, "task": task}


class Ping(Agent):
    name = "ping"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> None:
        await ctx.handoff("pong", task)


class Pong(Agent):
    name = "pong"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> None:
        await ctx.handoff("ping", task)


class Stepper(Agent):
    name = "stepper"

    async def handle(self, ctx: Context, task: dict[str, int]) -> int:
        for i in range(task["steps"]):
            await ctx.step(f"s{i}", int, i)
        return task["steps"]


class StuckFirst(Agent):
    """Its first attempt says it began (a file) and hangs; a redelivery answers at once."""

    name = "stuck-first"

    async def handle(self, ctx: Context, task: dict[str, str]) -> int:
        if ctx.attempt == 1:
            Path(task["began"]).write_text("1")
            await asyncio.sleep(60)
        return ctx.attempt


class Sleeper(Agent):
    name = "sleeper"

    async def handle(self, ctx: Context, task: dict[str, float]) -> str:
        await asyncio.sleep(task["sleep_s"])
        return "woke up"


class Wobbly(Agent):
    """Non-deterministic: its step name changes between attempts."""

    name = "wobbly"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        await ctx.step(f"pick-{random.randrange(10**9)}", lambda: 1)
        if ctx.attempt == 1:
            from relaybus.bus import Retry

            raise Retry("try again", delay_s=0.1)
        return "unreachable"


class Clock(Agent):
    """Journaled clock and randomness: a replay sees the first run's values."""

    name = "clock"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        now, rnd = ctx.now(), ctx.random()
        seen = await ctx.step("seen", lambda: [now, rnd])
        if ctx.attempt == 1:
            from relaybus.bus import Retry

            raise Retry("again", delay_s=0.1)
        return {"now": now, "random": rnd, "seen_first": seen}


class AddArgs(pydantic.BaseModel):
    a: int
    b: int
    log: str


@tool("math/add", cost=5)
def add(args: AddArgs) -> int:
    append(args.log, "add")
    return args.a + args.b


class ToolUser(Agent):
    name = "tooluser"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> int:
        total = await ctx.tool(add, task)
        if ctx.attempt == 1:
            from relaybus.bus import Retry

            raise Retry("once more", delay_s=0.1)
        return int(total)


class Shopper(Agent):
    """Calls a costed tool `n` times."""

    name = "shopper"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> int:
        total = 0
        for i in range(task["n"]):
            total += int(await ctx.tool(add, a=i, b=0, log=task["log"]))
        return total


class ShopsThenDelegates(Agent):
    """Calls the costed tool once itself, then has a `shopper` child call it twice."""

    name = "delegator"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> int:
        own = int(await ctx.tool(add, a=1, b=0, log=task["log"]))
        return own + int(await ctx.call("shopper", {"n": 2, "log": task["log"]}))


class ParkingShopper(Shopper):
    name = "pshopper"
    on_budget_exceeded = "park"


class Rememberer(Agent):
    """Remembers a fact for the run's user, then recalls it."""

    name = "rememberer"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        action = await ctx.step("remember", ctx.memory.remember, task["fact"])
        hits = await ctx.step("recall", ctx.memory.recall, task["fact"], 1)
        return {"action": action["action"], "recalled": [h["text"] for h in hits]}


@tool("math/add", cost=5, name="flaky_add")
def flaky_add(args: AddArgs) -> int:
    """Fails on its first call (for the log file), then adds."""
    append(args.log, "flaky_add")
    if len(Path(args.log).read_text().splitlines()) == 1:
        raise ConnectionError("the upstream dropped the connection")
    return args.a + args.b


class FlakyToolUser(Agent):
    """Its costed tool fails once: the retry must hold anew (the first hold was voided)."""

    name = "flakytooluser"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> int:
        return int(await ctx.tool(flaky_add, task))


class Crasher(Agent):
    """Its process dies in every attempt until the file `until` exists."""

    name = "crasher"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> str:
        if not Path(task["until"]).exists():
            os._exit(3)
        return "survived"


class CallsCrasher(Agent):
    name = "callscrasher"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"result": await ctx.call("crasher", task)}
        except ChildFailed as exc:
            return {"child_failed": exc.info.type}


class Relay(Agent):
    """Calls `child` with its task's x and returns what it answered."""

    name = "relay"

    async def handle(self, ctx: Context, task: dict[str, Any]) -> int:
        return int(await ctx.call("child", {"x": task["x"]}))


class WakesSlowly(Agent):
    """Spawns a child and waits for it; the first time it wakes it says so (a file, outside
    the journal) and hangs before anything it writes; then an effect, and the child's result."""

    name = "wakes-slowly"

    class Input(msgspec.Struct):
        woke: str
        effects: str

    async def handle(self, ctx: Context, task: WakesSlowly.Input) -> dict[str, Any]:
        (doubled,) = await ctx.gather(ctx.spawn("child", {"x": 21}))
        woke = Path(task.woke)
        if not woke.exists():
            woke.write_text(str(os.getpid()))
            await asyncio.sleep(60)  # kill -9 lands here: woken, nothing of it stored
        await ctx.step("charge", append, task.effects, "charged")
        return {"child": doubled}


class WakesOnCue(Agent):
    """Spawns a child and waits for it; once woken, says so (a file) and goes on, writing
    nothing before its end, only once the test puts down a `go` file."""

    name = "wakes-on-cue"

    async def handle(self, ctx: Context, task: dict[str, str]) -> dict[str, Any]:
        (doubled,) = await ctx.gather(ctx.spawn("child", {"x": 5}))
        Path(task["woke"]).write_text(str(os.getpid()))
        for _ in range(600):  # bounded: 60 s
            if Path(task["go"]).exists():
                break
            await asyncio.sleep(0.05)
        return {"child": doubled}


class StepsAfterWaking(Agent):
    """Waits for a child; once woken, one step, then (the first time) it hangs, to be killed;
    then a second step."""

    name = "steps-after-waking"

    async def handle(self, ctx: Context, task: dict[str, str]) -> int:
        (doubled,) = await ctx.gather(ctx.spawn("child", {"x": 3}))
        await ctx.step("first", append, task["effects"], "first")
        hung = Path(task["hung"])
        if not hung.exists():
            hung.write_text(str(os.getpid()))
            await asyncio.sleep(60)  # kill -9 lands here: woken, its claim stored
        await ctx.step("second", append, task["effects"], "second")
        return int(doubled)
