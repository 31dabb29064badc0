"""Another vendor's A2A agent, written with the a2a-sdk alone: it answers `{"quote": …}` and keeps
what it was sent (calls, metadata, headers). `hostile` serves a valid card but answers too much
or garbage."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import get_data_parts, new_data_part, new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events.event_queue_v2 import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, TaskState
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Seen:
    calls: int = 0
    metadata: list[dict[str, Any]] = field(default_factory=list)
    extension_headers: list[str] = field(default_factory=list)


class Quoter(AgentExecutor):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.seen.calls += 1
        assert context.message is not None
        self.seen.metadata.append(MessageToDict(context.message.metadata))
        asked = get_data_parts(list(context.message.parts))
        task_id, context_id = str(context.task_id), str(context.context_id)
        await event_queue.enqueue_event(
            new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED, history=[context.message])
        )
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.add_artifact([new_data_part({"quote": 42, "asked": asked})], name="quote")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def card(url: str) -> AgentCard:
    return AgentCard(
        name="quoter",
        description="quotes prices",
        version="1.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=False),
        default_input_modes=["application/json"],
        default_output_modes=["application/json"],
        skills=[AgentSkill(id="quote", name="quote", description="a price", tags=["prices"])],
    )


def quoter_routes(url: str, seen: Seen) -> list[Any]:
    the_card = card(url)
    handler = DefaultRequestHandler(
        agent_executor=Quoter(seen), task_store=InMemoryTaskStore(), agent_card=the_card
    )

    async def remember(request: Request) -> None:
        seen.extension_headers.append(request.headers.get("a2a-extensions", ""))

    rpc = create_jsonrpc_routes(handler, rpc_url="/quoter")[0]

    async def endpoint(request: Request) -> Response:
        await remember(request)
        response: Response = await rpc.endpoint(request)
        return response

    return [
        *create_agent_card_routes(the_card, card_url="/quoter/.well-known/agent-card.json"),
        Route("/quoter", endpoint, methods=["POST"]),
    ]


def hostile_routes(url: str, name: str, body: bytes) -> list[Any]:
    async def answer(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return [
        *create_agent_card_routes(card(url), card_url=f"/{name}/.well-known/agent-card.json"),
        Route(f"/{name}", answer, methods=["POST"]),
    ]


@contextlib.asynccontextmanager
async def vendor_server() -> AsyncIterator[tuple[str, Seen]]:
    """The quoter at BASE/quoter, and hostile agents at BASE/huge, BASE/garbage and
    BASE/elsewhere (a card naming another origin)."""
    sock = socket.create_server(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    seen = Seen()
    routes = [
        *quoter_routes(f"{base}/quoter", seen),
        *hostile_routes(f"{base}/huge", "huge", b'{"jsonrpc": "2.0", "result": "' + b"x" * 2_000_000 + b'"}'),
        *hostile_routes(f"{base}/garbage", "garbage", b'{"jsonrpc": "2.0", "id": 1, "result": {"task": 7}'),
        # a card that sends calls to another origin (here the same quoter under another name)
        *create_agent_card_routes(card(f"{base.replace('127.0.0.1', 'localhost')}/quoter"), card_url="/elsewhere/.well-known/agent-card.json"),
    ]  # fmt: skip

    class Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    server = Quiet(uvicorn.Config(Starlette(routes=routes), log_config=None, log_level="warning"))
    with sock:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        for _ in range(200):  # bounded: up within 10 s
            if server.started:
                break
            await asyncio.sleep(0.05)
        try:
            yield base, seen
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
