"""An a2a-sdk client, as another vendor's agent would use it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from a2a.client import ClientConfig, create_client
from a2a.client.client import Client as A2aClient
from a2a.helpers.proto_helpers import get_data_parts, new_data_part, new_message
from a2a.types import Message, Role, SendMessageRequest, Task, TaskState


@asynccontextmanager
async def a2a_client(
    url: str, token: str | None = None, *, streaming: bool = False
) -> AsyncIterator[A2aClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        client = await create_client(
            url, client_config=ClientConfig(streaming=streaming, httpx_client=http)
        )
        try:
            yield client
        finally:
            await client.close()


def data_message(data: Any, task_id: str | None = None, context_id: str | None = None) -> Message:
    return new_message(
        [new_data_part(data)], task_id=task_id, context_id=context_id, role=Role.ROLE_USER
    )


async def send(client: A2aClient, message: Message) -> Task:
    """message/send, as one answer: the task (the relaybus agents answer with tasks)."""
    responses = [r async for r in client.send_message(SendMessageRequest(message=message))]
    assert len(responses) == 1 and responses[0].HasField("task"), responses
    return responses[0].task


def result_of(task: Task) -> Any:
    assert task.status.state == TaskState.TASK_STATE_COMPLETED, task.status
    (artifact,) = task.artifacts
    return get_data_parts(list(artifact.parts))[0]
