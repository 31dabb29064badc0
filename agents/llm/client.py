"""An OpenAI-compatible chat client (OpenAI, Ollama, vLLM, a LiteLLM proxy, the scripted dev
model): one `chat {model}` span per call with `gen_ai.usage.*`, token and duration metrics,
retries with backoff on 429/5xx honouring Retry-After."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx
import msgspec
from opentelemetry.trace import SpanKind, Status, StatusCode
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from relaybus.bus import ConfigError, Settings, UpstreamFailed, metrics, tracing

from ..settings import LlmSettings
from .result import ChatResult

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_ATTEMPTS = 4


class _Transient(UpstreamFailed):
    """A response worth retrying (429/5xx, timeouts); carries the server's Retry-After."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _wait(state: Any) -> float:
    exc = state.outcome.exception() if state.outcome else None
    backoff = wait_exponential_jitter(initial=0.2, max=8.0)(state)
    if isinstance(exc, _Transient) and exc.retry_after_s:
        return min(max(exc.retry_after_s, backoff), 30.0)
    return float(backoff)


class LLMClient:
    """`async with LLMClient(settings) as llm: result = await llm.chat(messages)`."""

    def __init__(self, settings: Settings, *, timeout_s: float = 60.0) -> None:
        llm = LlmSettings.of(settings)
        if not llm.llm_base_url:
            raise ConfigError(
                "no LLM endpoint: set RELAYBUS_LLM_BASE_URL (any OpenAI-compatible /v1 URL), "
                "or start the scripted one with `relaybus dev model`"
            )
        self.settings = settings
        self.model = llm.llm_model or "scripted"
        self.base_url = llm.llm_base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {llm.llm_api_key}"} if llm.llm_api_key else {}
        self._http = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        run_id: str = "",
        cost_of: Callable[[ChatResult], int] | None = None,
    ) -> ChatResult:
        """One chat completion in a `chat {model}` span; `cost_of` prices the answer for the
        span's `relaybus.cost` (micro-units), so that the costed spans of a trace add up to
        what the ledger charged."""
        model = model or self.model
        body: dict[str, Any] = {"model": model, "messages": messages}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if tools:
            body["tools"] = tools
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model,
            "server.address": httpx.URL(self.base_url).host,
        }
        if run_id:
            attributes["relaybus.run_id"] = run_id
        started = time.perf_counter()
        with tracing.TRACER.start_as_current_span(
            f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            if self.settings.trace_content:
                span.add_event("gen_ai.input.messages", {"gen_ai.input.messages": _dump(messages)})
            try:
                result = await self._post_with_retries(body)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                span.set_attribute("error.type", type(exc).__name__)
                metrics.LLM_DURATION.record(
                    time.perf_counter() - started,
                    {"gen_ai.request.model": model, "error.type": type(exc).__name__},
                )
                raise
            span.set_attribute("gen_ai.response.model", result.model)
            span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
            if cost_of is not None:
                span.set_attribute("relaybus.cost", cost_of(result))
            if self.settings.trace_content:
                span.add_event("gen_ai.output.messages", {"gen_ai.output.messages": result.content})
        labels = {"gen_ai.request.model": model, "gen_ai.operation.name": "chat"}
        metrics.LLM_DURATION.record(time.perf_counter() - started, labels)
        metrics.TOKEN_USAGE.record(result.input_tokens, {**labels, "gen_ai.token.type": "input"})
        metrics.TOKEN_USAGE.record(result.output_tokens, {**labels, "gen_ai.token.type": "output"})
        return result

    async def _post_with_retries(self, body: dict[str, Any]) -> ChatResult:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(MAX_ATTEMPTS),
            wait=_wait,
            retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._post(body)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, body: dict[str, Any]) -> ChatResult:
        url = f"{self.base_url}/chat/completions"
        try:
            response = await self._http.post(url, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Transient(f"LLM endpoint {url} unreachable: {exc!r}") from None
        if response.status_code in RETRYABLE:
            retry_after = _retry_after(response.headers.get("retry-after"))
            raise _Transient(
                f"LLM endpoint answered {response.status_code}: {response.text[:200]}", retry_after
            )
        if response.status_code >= 400:
            raise UpstreamFailed(
                f"LLM endpoint {url} refused the request ({response.status_code}): "
                f"{response.text[:300]}"
            )
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
            usage = data.get("usage") or {}
            # convert, not the constructor: it checks every field's type, so a journaled
            # result always decodes again on a replay
            return msgspec.convert(
                {
                    "content": message.get("content") or "",
                    "model": data.get("model") or body["model"],
                    "input_tokens": int(usage.get("prompt_tokens", 0)),
                    "output_tokens": int(usage.get("completion_tokens", 0)),
                    "finish_reason": choice.get("finish_reason") or "",
                    "tool_calls": list(message.get("tool_calls") or []),
                },
                ChatResult,
            )
        except (
            ValueError,  # msgspec.ValidationError is one too
            KeyError,
            IndexError,
            TypeError,
            AttributeError,  # a list or string where an object belongs
            OverflowError,
            RecursionError,
        ) as exc:
            raise UpstreamFailed(
                f"LLM endpoint {url} sent a reply that is not a chat completion ({exc!r})"
            ) from None


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _dump(messages: list[dict[str, Any]]) -> str:
    return msgspec.json.encode(messages).decode()


async def list_models(settings: Settings, timeout_s: float = 10.0) -> list[str]:
    """The model ids the endpoint offers (`GET /models`); ConfigError when it cannot say."""
    llm = LlmSettings.of(settings)
    base = (llm.llm_base_url or "").rstrip("/")
    headers = {"Authorization": f"Bearer {llm.llm_api_key}"} if llm.llm_api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout_s, headers=headers) as http:
            response = await http.get(f"{base}/models")
            response.raise_for_status()
            return [str(m["id"]) for m in response.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"cannot list the models of {base} ({exc!r}); set RELAYBUS_LLM_MODEL"
        ) from None
