"""The `run_code` tool (scope `code/run`): a Python program an agent or its model wrote, run in
a bubblewrap sandbox (agents/tools/sandbox.py) and returned as data.

    from relaybus.agents.tools.code import run_code

    result = await ctx.tool(run_code, code="print(sum(range(10)))")
    answer = await ctx.llm(messages, tools=[run_code])        # or offered to the model

Journaled like every tool call (a replay returns the recorded result; the code never runs
twice), gated by the chain (`code/run:max_cpu_seconds=5,max_memory_mb=256` caps what a call
may ask for), audited, traced, and charged by the CPU seconds it used: the price table's
`run_code` entry is the price of one CPU second, the hold is that times the call's
`cpu_seconds`.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from ..errors import DataRefused
from ..settings import CodeSettings
from ..tool import tool
from .sandbox import Limits, Sandbox, SandboxUnavailable

if TYPE_CHECKING:
    from ..context import Context

CPU_SECOND_COST = 2_000  # micro-units per CPU second; the price table can override it
MAX_FILES_IN = 50
MAX_BYTES_IN = 1 << 20  # code and files together
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


class CodeRefused(DataRefused):
    """A run_code call asked for more than this host allows; nothing ran, nothing was charged."""

    def __init__(self, message: str, *, limit: str = "", allowed: float = 0.0) -> None:
        super().__init__(message)
        self.limit, self.allowed = limit, allowed

    def details(self) -> dict[str, str | int | float | bool]:
        return {"limit": self.limit, "allowed": self.allowed}


class Code(BaseModel):
    code: str = Field(
        min_length=1, max_length=MAX_BYTES_IN, description="a Python 3 program (standard library)"
    )
    files: dict[str, str] = Field(
        default_factory=dict,
        description="text files to place in the working directory first: relative name -> content",
    )
    cpu_seconds: float = Field(default=5.0, gt=0, le=3600, description="CPU time limit")
    wall_seconds: float = Field(default=10.0, gt=0, le=3600, description="wall-clock limit")
    memory_mb: int = Field(default=256, ge=16, le=65536, description="address-space limit")

    @field_validator("files")
    @classmethod
    def _plain_names(cls, files: dict[str, str]) -> dict[str, str]:
        if len(files) > MAX_FILES_IN:
            raise ValueError(f"{len(files)} files; at most {MAX_FILES_IN}")
        for name in files:
            parts = name.split("/")
            if len(parts) > 8 or not all(_NAME_PART.fullmatch(p) for p in parts):
                raise ValueError(
                    f"file name {name[:80]!r} must be a relative path of letters, digits, '.', "
                    "'_' and '-' (no '..', no leading '/' or '.')"
                )
        folders = {"/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)}
        clash = sorted(folders & set(files))
        if clash:
            raise ValueError(f"{clash[0]!r} is both a file and a folder of other files")
        if sum(len(v.encode()) for v in files.values()) > MAX_BYTES_IN:
            raise ValueError(f"files hold more than {MAX_BYTES_IN} bytes together")
        return files


_SANDBOXES: dict[CodeSettings, Sandbox] = {}


def sandbox_for(settings: CodeSettings) -> Sandbox:
    """The process's sandbox for these settings (checked once, on its first run)."""
    found = _SANDBOXES.get(settings)
    if found is None:
        found = _SANDBOXES[settings] = Sandbox(settings)
    return found


def limits_for(settings: CodeSettings, args: Code) -> Limits:
    """The call's limits; CodeRefused naming the setting when it asks for more than allowed."""
    asked = {
        "cpu_seconds": (args.cpu_seconds, settings.code_max_cpu_seconds),
        "wall_seconds": (args.wall_seconds, settings.code_max_wall_seconds),
        "memory_mb": (args.memory_mb, settings.code_max_memory_mb),
    }
    for name, (value, allowed) in asked.items():
        if value > allowed:
            raise CodeRefused(
                f"run_code: {name}={value:g} is over this host's limit {allowed:g} "
                f"(RELAYBUS_CODE_MAX_{name.upper()}); ask for at most {allowed:g}",
                limit=name,
                allowed=float(allowed),
            )
    return Limits(
        cpu_seconds=args.cpu_seconds,
        wall_seconds=args.wall_seconds,
        memory_mb=args.memory_mb,
        processes=settings.code_max_processes,
        output_bytes=settings.code_max_output_bytes,
        scratch_mb=settings.code_scratch_mb,
    )


@tool(
    "code/run",
    cost=CPU_SECOND_COST,
    name="run_code",
    max_units=lambda args: max(1.0, float(args.cpu_seconds)) + 1.0,  # the hard limit is +1 s
)
async def run_code(ctx: Context, args: Code) -> dict[str, Any]:
    """Run a Python 3 program in an isolated sandbox (no network, no access to the host) and
    return its exit code, stdout, stderr and the text files it wrote in its working directory.

    Pass input data in `files`; print results or write them to files."""
    settings = CodeSettings.of(ctx.settings)
    try:
        limits = limits_for(settings, args)
        if (
            len(args.code.encode()) + sum(len(v.encode()) for v in args.files.values())
            > MAX_BYTES_IN
        ):
            raise CodeRefused(f"run_code: code and files exceed {MAX_BYTES_IN} bytes together")
        report = await asyncio.to_thread(sandbox_for(settings).run, args.code, args.files, limits)
    except (CodeRefused, SandboxUnavailable) as exc:
        await ctx.audit("code/run", tool="run_code", decision="deny", reason=str(exc))
        raise
    ctx.meter(report.cpu_seconds)
    detail = {"exit_code": report.exit_code, "killed": report.killed, "cpu_s": report.cpu_seconds}
    await ctx.audit("code/ran", tool="run_code", detail=detail)
    return report.as_result()
