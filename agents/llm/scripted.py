"""`relaybus dev model`: a SCRIPTED OpenAI-compatible model server for demos and tests.

It is not a language model. It answers `POST /v1/chat/completions` from a list of rules
(`{"match": REGEX, "reply": TEXT}`, first match on the conversation wins; `{prompt}` in a reply is
the last user message), else with a fixed prefix and the last user message. Every answer says
it is scripted (`system_fingerprint: relaybus-scripted`) and reports token usage (words).
`fail_first=N` answers the first N requests with 503 (and Retry-After) to exercise retries.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

SCRIPTED_PREFIX = "[scripted model] "


@dataclass
class Rule:
    match: re.Pattern[str]
    reply: str


@dataclass
class ScriptedModel:
    rules: list[Rule] = field(default_factory=list)
    fail_first: int = 0
    requests: int = 0

    @classmethod
    def from_rules(cls, rules: list[dict[str, str]], fail_first: int = 0) -> ScriptedModel:
        return cls(
            [Rule(re.compile(r["match"], re.S | re.I), r["reply"]) for r in rules], fail_first
        )

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.requests += 1
        if self.requests <= self.fail_first:
            return 503, {"error": {"message": "scripted overload"}}, {"Retry-After": "0.05"}
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, {"error": {"message": "`messages` must be a non-empty list"}}, {}
        texts = [str(m.get("content") or "") for m in messages if isinstance(m, dict)]
        conversation = "\n".join(texts)
        last_user = next(
            (
                str(m.get("content") or "")
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
        reply = next(
            (r.reply for r in self.rules if r.match.search(conversation)),
            SCRIPTED_PREFIX + last_user[:400],
        ).replace("{prompt}", last_user)
        prompt_tokens = sum(len(t.split()) for t in texts)
        completion_tokens = len(reply.split())
        return (
            200,
            {
                "id": f"scripted-{self.requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": str(body.get("model") or "scripted"),
                "system_fingerprint": "relaybus-scripted",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            {},
        )


async def serve_model(
    model: ScriptedModel, host: str, port: int, ready: asyncio.Event | None = None
) -> asyncio.Server:
    """Start the HTTP server; the caller owns it (`server.close()`)."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status, payload, extra = _route(model, method, path, raw)
                data = json.dumps(payload).encode()
                head = [
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                    "Content-Type: application/json",
                    f"Content-Length: {len(data)}",
                    *(f"{k}: {v}" for k, v in extra.items()),
                ]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, host, port)
    if ready is not None:
        ready.set()
    return server


def _route(
    model: ScriptedModel, method: str, path: str, raw: bytes
) -> tuple[int, dict[str, Any], dict[str, str]]:
    if method == "GET" and path.rstrip("/").endswith("/models"):
        return 200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]}, {}
    if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
        return 404, {"error": {"message": f"no route {method} {path}"}}, {}
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        return 400, {"error": {"message": f"body is not JSON: {exc}"}}, {}
    if not isinstance(body, dict):
        return 400, {"error": {"message": "body must be a JSON object"}}, {}
    return model.answer(body)
