"""Agents the tests run as real processes (importable through PYTHONPATH=tests)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import pydantic

from relaybus.agents import Agent, Context, tool
from relaybus.agents.interceptors import Interceptor, RunTool
from relaybus.agents.tool import Tool
from relaybus.bus import RetryPolicy


class Job(msgspec.Struct):
    log: str
    sleep_s: float = 0.0


def record_attempt(path: str) -> int:
    """Append one line per attempt to a real file; returns how many attempts ran so far."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return len(Path(path).read_text().splitlines())


class CrashFirst(Agent):
    """Dies (kill -9 style) on its first attempt, succeeds on the next."""

    name = "crashfirst"

    async def handle(self, ctx: Context, task: Job) -> dict[str, int]:
        attempts = record_attempt(task.log)
        if attempts == 1:
            os._exit(9)
        return {"attempts": attempts}


class Slow(Agent):
    """Runs longer than the ack wait; heartbeats must keep its message."""

    name = "slow"

    async def handle(self, ctx: Context, task: Job) -> dict[str, int]:
        await asyncio.sleep(task.sleep_s)
        return {"attempts": record_attempt(task.log)}


class Typed(Agent):
    name = "typed"

    class Input(msgspec.Struct):
        count: int
        label: str

    async def handle(self, ctx: Context, task: Typed.Input) -> dict[str, object]:
        return {"doubled": task.count * 2, "label": task.label}


class Fragile(Agent):
    """Fails until the file named by `log` exists (a dependency coming back)."""

    name = "fragile"

    async def handle(self, ctx: Context, task: Job) -> dict[str, bool]:
        if not Path(task.log).exists():
            raise RuntimeError("dependency is down")
        return {"ok": True}


class Buggy(Agent):
    """A handler with a bug: its traceback must reach the run record and the dead letter."""

    name = "buggy"

    async def handle(self, ctx: Context, task: dict[str, int]) -> float:
        return average_price(task.get("total", 0), task.get("count", 0))


def average_price(total: int, count: int) -> float:
    return total / count


class Flaky(Agent):
    """Always fails; its class allows 2 attempts, 0.2 s apart (the settings allow 3)."""

    name = "flaky"
    retry = RetryPolicy(attempts=2, backoff_s=0.2)

    async def handle(self, ctx: Context, task: dict[str, str]) -> None:
        Path(task["log"]).open("a").write(f"{time.time()}\n")
        raise RuntimeError("upstream is down")


class EffectArgs(pydantic.BaseModel):
    log: str


@tool("test/effect")
def apply_effect(args: EffectArgs) -> str:
    record_attempt(args.log)
    return "applied"


class StallOnce(Interceptor):
    """Blocks its whole process (no heartbeats go out) for `STALL_S` seconds around the first
    tool call of any replica: a blocking call or CPU starvation past the ack wait."""

    async def run_tool(self, ctx: Context, tool: Tool, args: Any, call_next: RunTool) -> Any:
        try:
            fd = os.open(os.environ["STALL_MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return await call_next()
        os.close(fd)
        time.sleep(float(os.environ["STALL_S"]))
        return await call_next()


class Staller(Agent):
    """Calls a tool with an effect, stalling past the ack wait on the first call."""

    name = "staller"
    interceptors = [StallOnce()]

    async def handle(self, ctx: Context, task: Job) -> str:
        return str(await ctx.tool(apply_effect, log=task.log))


class SleepyOnce(Agent):
    """Blocks its process for `STALL_S` seconds in the first execution of any replica, then
    returns: a stall past the ack wait with no operation after it."""

    name = "sleepyonce"

    async def handle(self, ctx: Context, task: Job) -> str:
        try:
            fd = os.open(os.environ["STALL_MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return "not stalled"
        os.close(fd)
        time.sleep(float(os.environ["STALL_S"]))
        return "stalled"


class Effector(Agent):
    """Works a while (journaling nothing), then calls a tool with an effect."""

    name = "effector"

    async def handle(self, ctx: Context, task: Job) -> str:
        await asyncio.sleep(task.sleep_s)
        return str(await ctx.tool(apply_effect, log=task.log))
