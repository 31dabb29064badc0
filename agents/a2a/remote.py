"""Remote A2A agents as tools: `[a2a.NAME]` in the data-sources file becomes the tool `a2a.NAME`
(scope `a2a/NAME`, cost `price`), called through `ctx.tool` like any other, so the identity gate,
the ledger, the journal (a replay returns the recorded answer, the remote is not called again),
the circuit breaker, the audit and the span all apply.

    answer = await ctx.tool(DATA["a2a.pricing_agent"], text="price of widget?")
    answer = await ctx.tool(DATA["a2a.pricing_agent"], data={"product": "widget"})
    # {"state": "completed", "task_id": "…", "text": "…", "data": [...]}

Each call carries the run's delegation chain in the delegation extension (extension.py). The
answer is read through a byte cap (`max_bytes`): anything larger, or anything that is not a
valid A2A answer, fails the call with RemoteAgentRefused naming the agent and the problem.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pydantic
from a2a.client import ClientConfig, create_client
from a2a.client.client import Client as A2aClient
from a2a.helpers.proto_helpers import get_data_parts, get_text_parts, new_data_part, new_text_part
from a2a.types import Message, Part, Role, SendMessageRequest, Task, TaskState
from a2a.utils.errors import A2AError
from google.protobuf.json_format import ParseDict

from relaybus.agents.errors import DataRefused
from relaybus.bus import ErrorInfo, RelayError, UpstreamFailed

from ..tool import Tool
from ..tools.config import A2aSource, secret_values
from .extension import DELEGATION_URI, as_metadata, delegation_of

_STATES = {
    TaskState.TASK_STATE_COMPLETED: "completed",
    TaskState.TASK_STATE_INPUT_REQUIRED: "input-required",
    TaskState.TASK_STATE_AUTH_REQUIRED: "auth-required",
    TaskState.TASK_STATE_WORKING: "working",
    TaskState.TASK_STATE_SUBMITTED: "submitted",
}


class RemoteAgentRefused(DataRefused):
    """A remote A2A agent's answer was refused (too large, not valid A2A) or it refused or
    failed the task; journaled as the call's outcome, not retried."""

    def __init__(self, agent: str, problem: str) -> None:
        super().__init__(f"a2a.{agent}: {problem}")
        self.agent, self.problem = agent, problem

    def details(self) -> dict[str, str | int | float | bool]:
        return {"agent": self.agent, "problem": self.problem}

    @classmethod
    def from_info(cls, info: ErrorInfo) -> RelayError:
        d = info.details
        return cls(str(d.get("agent", "")), str(d.get("problem", "")))


class RemoteAgentUnreachable(UpstreamFailed):
    """A remote A2A agent did not answer (connection, timeout, 5xx); the task is retried and
    the failures count toward the tool's circuit breaker."""


class Ask(pydantic.BaseModel):
    """What to send: a text, a JSON value, or both."""

    model_config = pydantic.ConfigDict(extra="forbid")
    text: str = ""
    data: dict[str, Any] | list[Any] | None = None


class _AnswerTooLarge(Exception):
    pass


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, max_bytes: int) -> None:
        self.inner, self.max_bytes = inner, max_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for piece in self.inner:
            seen += len(piece)
            if seen > self.max_bytes:
                raise _AnswerTooLarge(f"its answer is over {self.max_bytes} bytes (max_bytes)")
            yield piece

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CappedTransport(httpx.AsyncBaseTransport):
    """Reads at most `max_bytes` of any response body (the card, an answer, a stream)."""

    def __init__(self, max_bytes: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.max_bytes = max_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CappedStream(response.stream, self.max_bytes),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


class RemoteAgent:
    """One declared remote A2A agent; its card is resolved once, on the first call."""

    def __init__(self, name: str, source: A2aSource) -> None:
        self.name, self.source = name, source
        self._secrets = secret_values(source)
        self._http = httpx.AsyncClient(
            headers={**source.headers, "A2A-Extensions": DELEGATION_URI},
            timeout=source.timeout_s,
            transport=_CappedTransport(source.max_bytes),
            event_hooks={"request": [self._same_origin]},
        )
        self._client: A2aClient | None = None

    async def _same_origin(self, request: httpx.Request) -> None:
        """The card names where calls go; our headers and the run's chain go nowhere but the
        configured origin (a card pointing elsewhere, or at plain http, is refused)."""
        want = httpx.URL(self.source.url)
        got = request.url
        if (got.scheme, got.host, got.port) != (want.scheme, want.host, want.port):
            raise RemoteAgentRefused(
                self.name,
                f"its card sends calls to {got.scheme}://{got.host}:{got.port}, not the "
                f"configured {want.scheme}://{want.host}:{want.port}; nothing was sent",
            )

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[secret]")
        return text[:300]

    async def ask(self, ask: Ask, metadata: dict[str, Any], message_id: str) -> dict[str, Any]:
        parts: list[Part] = []
        if ask.text:
            parts.append(new_text_part(ask.text))
        if ask.data is not None:
            parts.append(new_data_part(ask.data))
        if not parts:
            raise DataRefused(f"a2a.{self.name}: send a text or data (both are empty)")
        message = Message(role=Role.ROLE_USER, parts=parts, message_id=message_id)
        ParseDict(metadata, message.metadata)
        try:
            if self._client is None:
                self._client = await create_client(
                    self.source.url,
                    client_config=ClientConfig(streaming=False, httpx_client=self._http),
                )
            answers = [
                a async for a in self._client.send_message(SendMessageRequest(message=message))
            ]
        except Exception as exc:
            raise self._problem(exc) from None
        if len(answers) != 1:
            raise RemoteAgentRefused(self.name, f"it answered {len(answers)} times, not once")
        answer = answers[0]
        if answer.HasField("message"):
            return self._result("completed", "", answer.message.parts)
        return self._from_task(answer.task)

    def _from_task(self, task: Task) -> dict[str, Any]:
        state = task.status.state
        status_text = "\n".join(get_text_parts(list(task.status.message.parts)))
        if state not in _STATES:
            name = TaskState.Name(state).removeprefix("TASK_STATE_").lower()
            raise RemoteAgentRefused(
                self.name, f"the remote task ended {name}: {self.scrub(status_text) or '-'}"
            )
        parts = [p for artifact in task.artifacts for p in artifact.parts]
        if not parts:
            parts = list(task.status.message.parts)
        return self._result(_STATES[state], task.id, parts)

    def _result(self, state: str, task_id: str, parts: Any) -> dict[str, Any]:
        text = "\n".join(get_text_parts(list(parts)))
        for secret in self._secrets:
            text = text.replace(secret, "[secret]")
        return {
            "state": state,
            "task_id": task_id,
            "text": text,
            "data": get_data_parts(list(parts)),
        }

    def _problem(self, exc: Exception) -> Exception:
        causes = _causes(exc)
        for cause in causes:
            if isinstance(cause, RemoteAgentRefused):
                return cause
            if isinstance(cause, _AnswerTooLarge):
                return RemoteAgentRefused(self.name, str(cause))
        for cause in causes:
            if isinstance(cause, httpx.TransportError):
                return RemoteAgentUnreachable(
                    f"a2a.{self.name}: cannot reach the remote agent ({type(cause).__name__})"
                )
            if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code >= 500:
                return RemoteAgentUnreachable(
                    f"a2a.{self.name}: the remote agent answered {cause.response.status_code}"
                )
        shown = exc.message if isinstance(exc, A2AError) else f"{type(exc).__name__}: {exc}"
        return RemoteAgentRefused(
            self.name, f"its answer is not a valid A2A answer ({self.scrub(str(shown))})"
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        await self._http.aclose()


def remote_tool(remote: RemoteAgent) -> Tool:
    """The tool `a2a.<name>`: one message to the remote agent, its answer as JSON."""

    async def run(ctx: Any, args: Ask) -> dict[str, Any]:
        delegation = delegation_of(
            tuple(ctx.envelope.chain),
            principal=ctx.principal,
            run_id=ctx.run_id,
            task_id=ctx.task_id,
            agent=ctx.agent,
        )
        answer = await remote.ask(
            args, as_metadata(delegation), message_id=ctx.idempotency_key(f"a2a.{remote.name}")
        )
        await ctx.audit(
            f"a2a/{remote.name}",
            tool=f"a2a.{remote.name}",
            detail={"state": answer["state"], "remote_task": answer["task_id"]},
        )
        return answer

    return Tool(
        name=f"a2a.{remote.name}",
        scope=f"a2a/{remote.name}",
        cost=remote.source.price,
        model=Ask,
        fn=run,
        wants_ctx=True,
        breaker_failures=remote.source.breaker_failures,
        breaker_reset_s=remote.source.breaker_reset_s,
        description=remote.source.description or f"ask the remote A2A agent {remote.name}",
    )
