"""The MCP server: each exposed agent is a tool; a call is a run on behalf of the caller,
followed to its end with its events as progress notifications. A call the client cancels (or
abandons) cancels the run. Two more tools act on the caller's own runs: `relaybus.run` reads
one, `relaybus.cancel` stops one (a call that outlived `wait_s` answers with its run id).

MCP 2.3's server has no Tasks support, so a long run is one tool call reporting progress."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from relaybus.bus import Bus, Event, PermissionDenied, RelayError, new_id
from relaybus.bus.feed import EventFeed
from relaybus.services.runs.shown import shown_one
from relaybus.services.runs.state import ENDED, RunEnded, RunRecord

from ..control import cancel_run
from ..submit import RunOutcome, run_store, submit, wait_for_run
from .access import Caller, RunNotFound, audit_refusal, caller_of
from .exposed import ArgumentsInvalid, ExposedAgent

READ_RUN = "relaybus.run"
CANCEL_RUN = "relaybus.cancel"
RUN_ID_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"run_id": {"type": "string", "description": "the run id a call returned"}},
    "required": ["run_id"],
    "additionalProperties": False,
}
CANCEL_TIMEOUT_S = 10.0
INSTRUCTIONS = (
    "Each tool runs a relaybus agent as you (the user whose token this connection carries) "
    "and answers with the run's result. Long runs report progress; cancelling a call cancels "
    f"its run. A call that outlives the server's wait answers with its run id: read it with "
    f"{READ_RUN}, stop it with {CANCEL_RUN}."
)

Report = Callable[[Event], Awaitable[None]]


class ReportingFeed(EventFeed):
    """An EventFeed that hands each event of the run to `report` before the waiter sees it."""

    def __init__(self, bus: Bus, run_id: str, report: Report) -> None:
        super().__init__(bus, run_id, replay=True)
        self._report = report

    async def next_sourced(self, timeout_s: float) -> tuple[Event, str] | None:
        found = await super().next_sourced(timeout_s)
        if found is not None and found[0].kind not in ENDED:
            await self._report(found[0])
        return found


class RelaybusTools:
    """The tool handlers over one bus connection. `local` is the caller of a stdio server
    (whoever launched it); HTTP requests carry their own, put there by BearerAuth."""

    def __init__(
        self,
        bus: Bus,
        agents: list[ExposedAgent],
        *,
        wait_s: float = 600.0,
        local: Caller | None = None,
    ) -> None:
        self.bus = bus
        self.agents = {agent.name: agent for agent in agents}
        self.wait_s = wait_s
        self.local = local

    def server(self) -> Server[Any]:
        return Server(
            "relaybus",
            version="0.1.0",
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            get_tool_input_schema=self.input_schema,
        )

    def tools(self) -> list[types.Tool]:
        offered = [
            types.Tool(name=a.name, description=a.description, input_schema=a.input_schema)
            for a in self.agents.values()
        ]
        return [
            *offered,
            types.Tool(
                name=READ_RUN,
                description="Status, result and error of a run you started here.",
                input_schema=RUN_ID_SCHEMA,
            ),
            types.Tool(
                name=CANCEL_RUN,
                description="Cancel a run you started here; it stops everywhere.",
                input_schema=RUN_ID_SCHEMA,
            ),
        ]

    def input_schema(self, name: str) -> dict[str, Any] | None:
        return next((t.input_schema for t in self.tools() if t.name == name), None)

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools())

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = self._caller(ctx)
        if params.name in (READ_RUN, CANCEL_RUN):
            return await self._own_run(caller, params.name, params.arguments or {})
        agent = self.agents.get(params.name)
        if agent is None:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"no tool {params.name!r}: this server offers "
                f"{', '.join(t.name for t in self.tools())}",
            )
        try:
            payload = agent.payload(params.arguments)
        except ArgumentsInvalid as exc:
            await audit_refusal(self.bus, "mcp/call", caller.user, str(exc), tool=agent.name)
            return _error(str(exc))
        return await self._run(ctx, caller, agent, payload)

    def _caller(self, ctx: ServerRequestContext[Any]) -> Caller:
        request = ctx.request
        if isinstance(request, Request):
            found = caller_of(request.scope)
            if found is not None:
                return found
        elif self.local is not None:
            return self.local
        raise MCPError(code=types.INVALID_REQUEST, message="this request carries no caller")

    async def _run(
        self, ctx: ServerRequestContext[Any], caller: Caller, agent: ExposedAgent, payload: bytes
    ) -> types.CallToolResult:
        run_id = new_id()
        try:
            await submit(
                self.bus,
                agent.name,
                payload,
                sender=caller.sender,
                token=caller.token,
                run_id=run_id,
            )
        except PermissionDenied as exc:
            await audit_refusal(self.bus, "mcp/call", caller.user, str(exc), tool=agent.name)
            return _error(f"refused: {exc}")
        except RelayError as exc:
            return _error(f"could not start a run of {agent.name!r}: {exc}")
        count = 0

        async def report(event: Event) -> None:
            nonlocal count
            count += 1
            await ctx.session.report_progress(count, None, _progress_text(event))

        try:
            async with ReportingFeed(self.bus, run_id, report) as feed:
                outcome = await wait_for_run(feed, run_id, self.wait_s, agent.name)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_TIMEOUT_S):
                await _cancel_quietly(
                    self.bus, run_id, f"the MCP call of {caller.sender} was cancelled"
                )
            raise
        return _outcome_result(outcome)

    async def _own_run(
        self, caller: Caller, tool: str, args: dict[str, Any]
    ) -> types.CallToolResult:
        run_id = args.get("run_id")
        if not isinstance(run_id, str) or set(args) != {"run_id"}:
            return _error(f"{tool} takes one argument, run_id (a string)")
        record = await (await run_store(self.bus)).get(run_id) if _valid_run_id(run_id) else None
        if record is None or not caller.owns(record.submitted_by):
            refused = RunNotFound(run_id)
            action = "mcp/run/read" if tool == READ_RUN else "mcp/run/cancel"
            await audit_refusal(self.bus, action, caller.user, str(refused), run_id=run_id)
            return _error(str(refused))
        if tool == READ_RUN:
            return _record_result(await shown_one(self.bus, record))
        try:
            record = await cancel_run(self.bus, run_id, f"cancelled by {caller.sender} over MCP")
        except RunEnded as exc:
            return _error(str(exc))
        return _record_result(record)


def _valid_run_id(run_id: str) -> bool:
    return 0 < len(run_id) <= 64 and all(c.isalnum() or c in "-_" for c in run_id)


async def _cancel_quietly(bus: Bus, run_id: str, reason: str) -> None:
    try:
        await cancel_run(bus, run_id, reason)
    except RunEnded:
        pass  # it ended on its own meanwhile


def _progress_text(event: Event) -> str:
    """`run ID: step tick-0`, `run ID: call research`, ... (the id names the run to read or
    cancel later with relaybus.run / relaybus.cancel)."""
    parts = [f"run {event.run_id}: {event.kind}"]
    if event.recipient and event.kind in ("call", "handoff", "started"):
        parts.append(event.recipient)
    if event.detail:
        parts.append(event.detail)
    return " ".join(parts)


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def _outcome_result(outcome: RunOutcome) -> types.CallToolResult:
    if outcome.status == "completed":
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(outcome.result))],
            structured_content={
                "run_id": outcome.run_id,
                "status": "completed",
                "result": outcome.result,
            },
        )
    if outcome.status == "timeout":
        text = (
            f"run {outcome.run_id} is still running; read it with {READ_RUN} or stop it with "
            f"{CANCEL_RUN} (run_id {outcome.run_id!r})"
        )
        return types.CallToolResult(
            content=[types.TextContent(text=text)],
            structured_content={"run_id": outcome.run_id, "status": "running"},
        )
    return types.CallToolResult(
        content=[types.TextContent(text=f"run {outcome.run_id} {outcome.status}: {outcome.error}")],
        structured_content={
            "run_id": outcome.run_id,
            "status": outcome.status,
            "error": outcome.error,
        },
        is_error=True,
    )


def _record_result(record: RunRecord) -> types.CallToolResult:
    summary = record.summary()
    summary.pop("traceback", None)  # where the handler failed is for operators, not MCP callers
    return types.CallToolResult(
        content=[types.TextContent(text=json.dumps(summary))], structured_content=summary
    )
