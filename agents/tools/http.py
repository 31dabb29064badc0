"""The HTTP API tools: declared endpoints only, typed arguments, secrets from configuration.

Per API NAME and endpoint E: the tool `NAME.E` with scope `api/call/NAME/E`. Arguments fill the
path template, each as exactly one path segment: percent-encoded with no safe characters, and
refused when empty, a dot segment (`.`, `..`, `%2e%2e`…) or holding a `/` or `\\` once decoded;
the final URL is then checked to have the declared template's path, so no argument can reach
another endpoint with the API's credentials. The rest go in the query string (GET, DELETE) or a
JSON body. 5xx
answers and transport errors are retried (tenacity, exponential backoff) and then raise
UpstreamFailed, which counts toward the tool's circuit breaker; a 4xx is the caller's mistake
(DataRefused). Header secrets never reach the model: responses and errors are scrubbed of them.
"""

from __future__ import annotations

import json
import string
import unicodedata
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pydantic
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from relaybus.agents.errors import DataRefused
from relaybus.bus import ConfigError, UpstreamFailed

from ..tool import Tool
from .config import ApiSource, Endpoint, params_model, secret_values


class _Transient(Exception):
    pass


class ApiClient:
    def __init__(self, name: str, api: ApiSource) -> None:
        self.name, self.api = name, api
        self._secrets = secret_values(api)
        self.client = httpx.AsyncClient(base_url=api.base_url, headers=api.headers)
        self._path_fields: dict[str, set[str]] = {}
        for ename, endpoint in api.endpoints.items():
            fields = {f for _, f, _, _ in string.Formatter().parse(endpoint.path) if f}
            self._path_fields[ename] = fields
            unknown = fields - set(endpoint.params)
            if unknown:
                raise ConfigError(
                    f"[api.{name}.endpoints.{ename}] path uses {{{sorted(unknown)[0]}}}, "
                    "which is not among its params"
                )

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[secret]")
        return text

    def url(self, ename: str, endpoint: Endpoint, args: dict[str, Any]) -> httpx.URL:
        """The endpoint's URL with `args` in its path; DataRefused if one would change the path."""
        label = f"{self.name}.{ename}"
        segments = {k: _segment(label, k, args[k]) for k in self._path_fields[ename]}
        path = endpoint.path.format(**segments)
        base = self.client.base_url
        url = self.client.build_request(endpoint.method, path).url
        expected = base.raw_path + path.lstrip("/").encode("ascii")
        if (url.scheme, url.host, url.port, url.raw_path) != (
            base.scheme, base.host, base.port, expected
        ):  # fmt: skip
            raise DataRefused(
                f"{label}: the arguments would send the call to {url.path!r}, not to the "
                f"declared {endpoint.path!r}; pass the bare identifiers"
            )
        return url

    async def call(self, ename: str, endpoint: Endpoint, args: dict[str, Any]) -> dict[str, Any]:
        fields = self._path_fields[ename]
        url = self.url(ename, endpoint, args)
        rest = {k: v for k, v in args.items() if k not in fields}
        in_query = endpoint.method in ("GET", "DELETE")
        label = f"{self.name}.{ename}"
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(endpoint.retries),
                wait=wait_exponential(multiplier=0.05, max=2.0),
                retry=retry_if_exception_type(_Transient),
                reraise=True,
            ):
                with attempt:
                    return await self._once(label, endpoint, url, rest, in_query)
        except _Transient as exc:
            raise UpstreamFailed(
                f"{label}: {self.scrub(str(exc))} (after {endpoint.retries} attempts)"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, label: str, endpoint: Endpoint, url: httpx.URL, rest: dict[str, Any], in_query: bool
    ) -> dict[str, Any]:
        try:
            async with self.client.stream(
                endpoint.method,
                url,
                params=rest if in_query else None,
                json=None if in_query else rest,
                timeout=endpoint.timeout_s,
            ) as response:
                body, truncated = bytearray(), False
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > endpoint.max_bytes:
                        truncated = True
                        del body[endpoint.max_bytes :]
                        break
        except httpx.TimeoutException:
            raise _Transient(f"no answer within {endpoint.timeout_s}s") from None
        except httpx.TransportError as exc:
            raise _Transient(f"cannot reach the API ({type(exc).__name__})") from None
        text = self.scrub(body.decode("utf-8", "replace"))
        if response.status_code >= 500:
            raise _Transient(f"the API answered {response.status_code}: {text[:200]}")
        if response.status_code >= 400:
            raise DataRefused(f"{label}: the API answered {response.status_code}: {text[:300]}")
        result: dict[str, Any] = {
            "status": response.status_code,
            "truncated": truncated,
            "note": "",
        }
        if truncated:
            result["note"] = f"response cut at {endpoint.max_bytes} bytes; ask for less"
            result["text"] = text
            return result
        try:
            result["json"] = json.loads(text) if text else None
        except ValueError:
            result["text"] = text
        return result

    async def close(self) -> None:
        await self.client.aclose()


def _segment(label: str, name: str, value: Any) -> str:
    """`value` as one path segment, percent-encoded with no safe characters; DataRefused when a
    server could read it as something else than one plain segment."""
    text = decoded = str(value)
    while (once := unquote(decoded)) != decoded:  # however many layers decode it (each shortens)
        decoded = once
    problem = ""
    if not text:
        problem = "is empty"
    elif decoded in (".", ".."):
        problem = "decodes to a dot segment"
    elif "/" in decoded or "\\" in decoded:
        problem = "holds a path separator ('/' or '\\') once decoded"
    elif any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in decoded):
        problem = "holds a control character once decoded"
    if problem:
        raise DataRefused(
            f"{label}: path parameter {name}={text!r} {problem}, which could change the "
            "endpoint the call reaches; pass the bare identifier"
        )
    return quote(text, safe="")


def api_tools(client: ApiClient) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for ename, endpoint in client.api.endpoints.items():
        model = params_model(f"{client.name}_{ename}", endpoint.params)

        async def run(
            ctx: Any, args: pydantic.BaseModel, _name: str = ename, _endpoint: Endpoint = endpoint
        ) -> Any:
            result = await client.call(_name, _endpoint, args.model_dump())
            await ctx.audit(
                f"api/call/{client.name}/{_name}",
                tool=f"{client.name}.{_name}",
                detail={"status": result["status"], "truncated": result["truncated"]},
            )
            return result

        tools[f"{client.name}.{ename}"] = Tool(
            name=f"{client.name}.{ename}",
            scope=f"api/call/{client.name}/{ename}",
            cost=endpoint.cost,
            model=model,
            fn=run,
            wants_ctx=True,
            breaker_failures=endpoint.breaker_failures,
            breaker_reset_s=endpoint.breaker_reset_s,
        )
    return tools
