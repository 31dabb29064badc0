"""`relaybus dev model`: a SCRIPTED OpenAI-compatible model server for demos and tests.

It is not a language model. It answers `POST /v1/chat/completions` deterministically, in order:

1. `rules`: `{"match": REGEX, "reply": TEXT}`, first match on the conversation wins (`{prompt}` in
   a reply is the last user message);
2. when tools are offered, it follows every instruction it finds *anywhere* in the conversation,
   data blocks included — as naively as a real model that gets prompt-injected: "send … to
   ADDRESS" calls the tool that takes a `to` argument once per address; "call TOOL with {JSON}"
   calls TOOL;
3. after tool results, a short account of them;
4. with data blocks in the last user message, a "summary": the blocks' text, trimmed;
5. otherwise a fixed prefix and the last user message.

Every answer says it is scripted (`system_fingerprint: relaybus-scripted`, text replies start with
`[scripted model]`) and reports token usage (words). `fail_first=N` answers the first N requests
with 503 and Retry-After; with `fail_every=M` that burst repeats every M requests.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relaybus.bus.httpserve import LOOPBACK, HttpServer, json_app, json_error, serve_app

from .prompt import data_blocks

SCRIPTED_PREFIX = "[scripted model] "
SUMMARY_WORDS = 120
_ADDRESS = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_SEND = re.compile(
    rf"\b(?:send|e-?mail|forward|mail|copy)\b[^.!?\n]{{0,120}}?\bto\b\s*:?\s*"
    rf"({_ADDRESS}(?:\s*(?:,|and|&)\s*{_ADDRESS})*)",
    re.I,
)
_CALL = re.compile(r"\bcall\s+(?:the\s+)?`?(\w+)`?(?:\s+tool)?\s+with\s+(\{[^\n]*?\})", re.I)
_SUBJECT = re.compile(r"^\s*subject:\s*(.+)$", re.I | re.M)


@dataclass
class Rule:
    match: re.Pattern[str]
    reply: str


@dataclass
class ScriptedModel:
    rules: list[Rule] = field(default_factory=list)
    fail_first: int = 0
    fail_every: int = 0
    requests: int = 0

    @classmethod
    def from_rules(
        cls, rules: list[dict[str, str]], fail_first: int = 0, fail_every: int = 0
    ) -> ScriptedModel:
        return cls(
            [Rule(re.compile(r["match"], re.S | re.I), r["reply"]) for r in rules],
            fail_first,
            fail_every,
        )

    def _failing(self) -> bool:
        if self.fail_every > 0:
            return (self.requests - 1) % self.fail_every < self.fail_first
        return self.requests <= self.fail_first

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.requests += 1
        if self._failing():
            return 503, {"error": {"message": "scripted overload"}}, {"Retry-After": "0.05"}
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) for m in messages)
        ):
            return 400, {"error": {"message": "`messages` must be a non-empty list of objects"}}, {}
        texts = [str(m.get("content") or "") for m in messages]
        conversation = "\n".join(texts)
        last_user = next(
            (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        tools = body.get("tools") if isinstance(body.get("tools"), list) else []
        calls: list[dict[str, Any]] = []
        rule = next((r.reply for r in self.rules if r.match.search(conversation)), None)
        if rule is not None:
            reply = rule.replace("{prompt}", last_user)
        elif messages[-1].get("role") == "tool":
            reply = SCRIPTED_PREFIX + "; ".join(_tool_outcomes(messages))
        elif tools and (calls := _follow_instructions(conversation, last_user, tools)):
            reply = ""
        elif blocks := data_blocks(last_user):
            reply = SCRIPTED_PREFIX + "\n\n".join(
                f"{source}: {_trim(content.replace(SCRIPTED_PREFIX, ''))}"
                for source, content in blocks
            )
        else:
            reply = SCRIPTED_PREFIX + last_user[:400]
        prompt_tokens = sum(len(t.split()) for t in texts)
        completion_tokens = len(reply.split()) + sum(
            len(c["function"]["arguments"].split()) for c in calls
        )
        message: dict[str, Any] = {"role": "assistant", "content": reply or None}
        if calls:
            message["tool_calls"] = calls
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
                        "message": message,
                        "finish_reason": "tool_calls" if calls else "stop",
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


def _follow_instructions(
    conversation: str, last_user: str, tools: list[Any]
) -> list[dict[str, Any]]:
    """Tool calls for every instruction in the conversation, wherever it came from."""
    functions = {
        f["name"]: f
        for t in tools
        if isinstance(t, dict) and isinstance(f := t.get("function"), dict) and f.get("name")
    }
    calls: list[tuple[str, dict[str, Any]]] = []
    mailer = next((n for n, f in functions.items() if "to" in _properties(f)), None)
    if mailer is not None:
        subject = _SUBJECT.search(conversation)
        blocks = data_blocks(last_user)
        seen: list[str] = []
        for found in _SEND.finditer(conversation):
            seen += [a for a in re.findall(_ADDRESS, found[1]) if a not in seen]
        for address in seen:
            args: dict[str, Any] = {"to": address}
            props = _properties(functions[mailer])
            if "subject" in props:
                args["subject"] = subject[1].strip() if subject else "Report"
            if "body" in props:
                args["body"] = blocks[0][1] if blocks else last_user
            calls.append((mailer, args))
    for found in _CALL.finditer(conversation):
        if found[1] in functions:
            try:
                calls.append((found[1], json.loads(found[2])))
            except ValueError:
                continue
    return [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for i, (name, args) in enumerate(calls, 1)
    ]


def _properties(function: dict[str, Any]) -> dict[str, Any]:
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    return props if isinstance(props, dict) else {}


def _tool_outcomes(messages: list[dict[str, Any]]) -> list[str]:
    """What the tool messages after the last assistant turn said, one line each."""
    outcomes: list[str] = []
    for m in reversed(messages):
        if m.get("role") != "tool":
            break
        content = str(m.get("content") or "")
        blocks = data_blocks(content)
        text = blocks[0][1] if blocks else content
        outcomes.append(text.strip().splitlines()[0][:200] if text.strip() else "(empty)")
    return list(reversed(outcomes)) or ["done"]


def _trim(text: str) -> str:
    words = text.split()
    return " ".join(words[:SUMMARY_WORDS]) + (" …" if len(words) > SUMMARY_WORDS else "")


def model_app(model: ScriptedModel) -> Starlette:
    """`POST …/chat/completions` and `GET …/models`, under any prefix (`/v1` for OpenAI's)."""

    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            return json_error(400, f"body is not JSON: {exc}")
        if not isinstance(body, dict):
            return json_error(400, "body must be a JSON object")
        status, payload, headers = model.answer(body)
        return JSONResponse(payload, status, headers=headers)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    return json_app(
        [
            Route(path, endpoint, methods=[method])
            for suffix, endpoint, method in (
                ("/chat/completions", chat, "POST"),
                ("/models", models, "GET"),
            )
            for path in (suffix, "/{prefix:path}" + suffix)
        ]
    )


async def serve_model(model: ScriptedModel, host: str = LOOPBACK, port: int = 0) -> HttpServer:
    """Start the HTTP server; the caller owns it (`server.close()`, or `async with`)."""
    return await serve_app(model_app(model), host, port)
