"""`relaybus a2a serve`: relaybus agents as A2A agents, one Agent Card and one JSON-RPC endpoint
per exposed agent, on one Starlette app.

    GET  /agents/<name>/.well-known/agent-card.json     the card (public)
    POST /agents/<name>                                  JSON-RPC: SendMessage, SendStreamingMessage,
                                                         GetTask, CancelTask (bearer token)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue_v2 import Event
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import (
    DefaultServerCallContextBuilder,
    create_agent_card_routes,
    create_jsonrpc_routes,
)
from a2a.server.tasks import InMemoryTaskStore
from a2a.server.tasks.task_store import TaskStore
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentExtension,
    AgentInterface,
    AgentSkill,
    CancelTaskRequest,
    GetTaskRequest,
    HTTPAuthSecurityScheme,
    Message,
    SecurityRequirement,
    SecurityScheme,
    SendMessageRequest,
    StringList,
    Task,
)
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT
from a2a.utils.errors import TaskNotFoundError
from starlette.applications import Starlette
from starlette.requests import Request

from relaybus.bus import Bus, RelayError
from relaybus.bus.subjects import check_name
from relaybus.services.identity.client import publish_audit
from relaybus.services.identity.messages import AuditRecord
from relaybus.services.runs.state import ENDED

from .access import BearerAuth, Caller, TokenCheck
from .executor import CALLER_KEY, RunExecutor, run_id_of
from .extension import DELEGATION_URI
from .runs import CallerRuns, NotYourRun

BEARER = "relaybus-token"


def agent_card(agent: str, base_url: str, identity_on: bool) -> AgentCard:
    """The card of relaybus agent `agent`, served at `base_url/agents/<agent>`."""
    card = AgentCard(
        name=agent,
        description=f"relaybus agent {agent!r}: a message starts a run; its result is the answer",
        version="1.0",
        supported_interfaces=[
            AgentInterface(
                url=f"{base_url}/agents/{agent}",
                protocol_binding="JSONRPC",
                protocol_version=PROTOCOL_VERSION_CURRENT,
            )
        ],
        capabilities=AgentCapabilities(
            streaming=True,
            extensions=[
                AgentExtension(
                    uri=DELEGATION_URI,
                    description="the caller's relaybus delegation chain (recorded, not trusted)",
                    required=False,
                )
            ],
        ),
        default_input_modes=["application/json", "text/plain"],
        default_output_modes=["application/json"],
        skills=[
            AgentSkill(
                id=agent,
                name=agent,
                description=f"runs the relaybus agent {agent}",
                tags=["relaybus"],
            )
        ],
    )
    if identity_on:
        card.security_schemes[BEARER].CopyFrom(
            SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="Bearer",
                    bearer_format="relaybus API token",
                    description="`relaybus identity user token USER`",
                )
            )
        )
        card.security_requirements.append(SecurityRequirement(schemes={BEARER: StringList()}))
    return card


class _CallerContext(DefaultServerCallContextBuilder):
    """Passes the caller the middleware verified on to the executor."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[CALLER_KEY] = request.scope.get("relaybus.caller")
        headers = context.state.get("headers", {})  # the SDK reads the A2A-Version header
        context.state["headers"] = {k: v for k, v in headers.items() if k != "authorization"}
        return context


class GatewayHandler(DefaultRequestHandler):
    """The SDK's handler, with every refusal to find a task audited, and cancel reaching the
    relaybus run however the A2A task is held (running here, or parked for input)."""

    def __init__(self, bus: Bus, agent: str, card: AgentCard, store: TaskStore) -> None:
        super().__init__(agent_executor=RunExecutor(bus, agent), task_store=store, agent_card=card)
        self.bus, self.agent = bus, agent

    async def _refused(self, context: ServerCallContext, action: str, task_id: str) -> None:
        caller = context.state.get(CALLER_KEY)
        await publish_audit(
            self.bus,
            AuditRecord(
                action=action,
                decision="deny",
                principal=caller.user if isinstance(caller, Caller) else "a2a:anonymous",
                actor="a2a:gateway",
                reason=f"no task {task_id[:80]} of this user",
                run_id=run_id_of(task_id)[:120],
                detail={"agent": self.agent},
            ),
        )

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        try:
            return await super().on_get_task(params, context)
        except TaskNotFoundError:
            await self._refused(context, "a2a/get", params.id)
            raise

    async def on_cancel_task(
        self, params: CancelTaskRequest, context: ServerCallContext
    ) -> Task | None:
        stored = await self.task_store.get(params.id, context)
        caller = context.state.get(CALLER_KEY)
        if stored is None or not isinstance(caller, Caller):
            await self._refused(context, "a2a/cancel", params.id)
            raise TaskNotFoundError
        runs = CallerRuns(self.bus, caller)
        try:
            record = await runs.record(run_id_of(params.id))
        except NotYourRun:
            await self._refused(context, "a2a/cancel", params.id)
            raise TaskNotFoundError from None
        if record.status not in ENDED:
            await runs.cancel(record.run_id)
        return await super().on_cancel_task(params, context)

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Message | Task:
        try:
            return await super().on_message_send(params, context)
        except TaskNotFoundError:
            await self._refused(context, "a2a/follow-up", params.message.task_id)
            raise

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        try:
            async for event in super().on_message_send_stream(params, context):
                yield event
        except TaskNotFoundError:
            await self._refused(context, "a2a/follow-up", params.message.task_id)
            raise


def create_app(
    bus: Bus,
    agents: list[str],
    base_url: str,
    identity_on: bool,
    stores: Mapping[str, TaskStore] | None = None,
) -> Any:
    """The ASGI app serving `agents` (behind the bearer-token middleware); each agent's A2A
    tasks in `stores[agent]` (KvTaskStore: shared by replicas, kept over restarts), else in
    this process's memory."""
    if not agents:
        raise RelayError("serve at least one agent: `relaybus a2a serve --agent NAME`")
    routes: list[Any] = []
    handlers: list[GatewayHandler] = []
    for agent in dict.fromkeys(agents):
        check_name("agent", agent)
        card = agent_card(agent, base_url, identity_on)
        store = (stores or {}).get(agent) or InMemoryTaskStore()
        handler = GatewayHandler(bus, agent, card, store)
        handlers.append(handler)
        routes += create_agent_card_routes(
            card, card_url=f"/agents/{agent}/.well-known/agent-card.json"
        )
        routes += create_jsonrpc_routes(
            handler, rpc_url=f"/agents/{agent}", context_builder=_CallerContext()
        )

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for handler in handlers:
                await handler.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    return BearerAuth(app, TokenCheck(bus, identity_on))
