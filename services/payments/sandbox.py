"""`relaybus payments sandbox`: a SANDBOX payment provider — moves no money — speaking the Stripe
HTTP shapes the Stripe adapter uses, as its own process with its state persisted in a JSON file.

PaymentIntents with manual capture (amount ≤ 1,000,000 minor units; payee `declined` is always
declined), capture (≤ the authorized amount), cancel, refunds (never above what was captured),
`Idempotency-Key` on every write (same key, same body: the first answer; another body: 400),
Bearer auth, and signed webhooks (`Stripe-Signature`) for every state change, sent to
`--webhook-url`. Every response carries `X-Relaybus-Sandbox: true`, every object
`livemode: false`. `POST /sandbox/refunds` refunds as if from the provider's dashboard; `POST
/sandbox/events/{id}/resend` delivers an event again (to exercise duplicate handling).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relaybus.bus.httpserve import LOOPBACK, HttpServer, json_app, serve_app
from relaybus.bus.private import write_private

from .provider import sign_webhook

MAX_AMOUNT = 1_000_000
INVALID = "invalid_request_error"
Written = tuple[Any, list[tuple[str, Any]]]  # the object answered, the events it causes
Write = Callable[[str, dict[str, str]], Written]  # (the path's id, the form) -> Written


class _Refused(Exception):
    """A write the provider refuses: answered with `status` and a Stripe-shaped error."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": kind, "message": message}}

    def response(self) -> Response:
        return JSONResponse(self.body, self.status)


class Sandbox:
    def __init__(
        self, state_file: Path, api_key: str, webhook_url: str = "", webhook_secret: str = ""
    ) -> None:
        self.state_file = state_file
        self.api_key = api_key
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.state: dict[str, dict[str, Any]] = {
            "intents": {},
            "refunds": {},
            "keys": {},
            "events": {},
        }
        if state_file.exists():
            self.state.update(json.loads(state_file.read_text()))
        else:
            self._save()
        self._tasks: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(timeout=10.0)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        await self._http.aclose()

    def app(self) -> Starlette:
        """The provider's HTTP API: Bearer auth on every request, the sandbox label on every
        answer, idempotency keys on every write."""
        writes: dict[str, Write] = {
            "/v1/payment_intents": self._create,
            "/v1/payment_intents/{id}/capture": self._capture,
            "/v1/payment_intents/{id}/cancel": self._cancel,
            "/v1/refunds": self._refund,
            "/sandbox/refunds": self._refund,
            "/sandbox/events/{id}/resend": self._resend,
        }
        routes = [Route("/v1/payment_intents/{id}", self._retrieve, methods=["GET"])]
        routes += [
            Route(path, self._endpoint(write), methods=["POST"]) for path, write in writes.items()
        ]
        return json_app(routes, [Middleware(_Guard, api_key=self.api_key)])

    async def _retrieve(self, request: Request) -> Response:
        try:
            return JSONResponse(self._intent(request.path_params["id"]))
        except _Refused as refused:
            return refused.response()

    def _endpoint(self, write: Write) -> Callable[[Request], Awaitable[Response]]:
        """POST: `write` once per `Idempotency-Key` (a repeat gets the first answer), its events
        sent, the state saved."""

        async def endpoint(request: Request) -> Response:
            try:
                form = dict(parse_qsl((await request.body()).decode()))
            except UnicodeDecodeError:
                return _Refused(400, INVALID, "the body is not UTF-8").response()
            key = request.headers.get("idempotency-key", "")
            fingerprint = hashlib.sha256(
                f"{request.url.path}\0{sorted(form.items())}".encode()
            ).hexdigest()
            seen = self.state["keys"].get(key) if key else None
            if seen is not None:
                if seen["fingerprint"] != fingerprint:
                    return _Refused(
                        400,
                        "idempotency_error",
                        f"Idempotency-Key {key} was used with other parameters",
                    ).response()
                return JSONResponse(
                    seen["body"], seen["status"], headers={"Idempotent-Replayed": "true"}
                )
            try:
                answer, events = write(request.path_params.get("id", ""), form)
                status = 200
            except _Refused as refused:
                status, answer, events = refused.status, refused.body, []
            if key:
                self.state["keys"][key] = {
                    "fingerprint": fingerprint,
                    "status": status,
                    "body": answer,
                }
            for kind, obj in events:
                self._emit(kind, obj)
            self._save()
            return JSONResponse(answer, status)

        return endpoint

    def _intent(self, intent_id: str) -> dict[str, Any]:
        intent = self.state["intents"].get(intent_id)
        if intent is None:
            raise _Refused(404, INVALID, f"no such payment_intent {intent_id}")
        return intent

    def _create(self, _: str, form: dict[str, str]) -> Written:
        amount = _integer(form, "amount")
        currency = form.get("currency", "")
        if not 0 < amount <= MAX_AMOUNT or len(currency) != 3:
            raise _Refused(400, INVALID, f"amount must be 1..{MAX_AMOUNT} and currency 3 letters")
        metadata = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
        if metadata.get("payee") == "declined":
            raise _Refused(402, "card_error", "Your card was declined.")
        created: dict[str, Any] = {
            "id": "pi_" + secrets.token_hex(12),
            "object": "payment_intent",
            "amount": amount,
            "currency": currency,
            "status": "requires_capture",
            "amount_received": 0,
            "amount_refunded": 0,
            "metadata": metadata,
            "livemode": False,
            "created": int(time.time()),
        }
        self.state["intents"][created["id"]] = created
        return created, [("payment_intent.amount_capturable_updated", created)]

    def _capture(self, intent_id: str, form: dict[str, str]) -> Written:
        intent = self._intent(intent_id)
        amount = _integer(form, "amount_to_capture", intent["amount"])
        if intent["status"] != "requires_capture":
            raise _Refused(
                400,
                INVALID,
                f"payment_intent is {intent['status']}; only requires_capture can be captured",
            )
        if not 0 < amount <= intent["amount"]:
            raise _Refused(400, INVALID, f"amount_to_capture must be 1..{intent['amount']}")
        intent.update(status="succeeded", amount_received=amount)
        return intent, [("payment_intent.succeeded", intent)]

    def _cancel(self, intent_id: str, form: dict[str, str]) -> Written:
        intent = self._intent(intent_id)
        if intent["status"] != "requires_capture":
            raise _Refused(
                400, INVALID, f"payment_intent is {intent['status']}; it cannot be canceled"
            )
        intent["status"] = "canceled"
        return intent, [("payment_intent.canceled", intent)]

    def _refund(self, _: str, form: dict[str, str]) -> Written:
        intent = self.state["intents"].get(form.get("payment_intent", ""))
        if intent is None or intent["status"] != "succeeded":
            raise _Refused(
                400, INVALID, "only a captured (succeeded) payment_intent can be refunded"
            )
        left = intent["amount_received"] - intent["amount_refunded"]
        amount = _integer(form, "amount", left)
        if not 0 < amount <= left:
            raise _Refused(
                400, INVALID, f"refund of {amount} is more than the {left} left to refund"
            )
        intent["amount_refunded"] += amount
        refund: dict[str, Any] = {
            "id": "re_" + secrets.token_hex(12),
            "object": "refund",
            "amount": amount,
            "payment_intent": intent["id"],
            "status": "succeeded",
        }
        self.state["refunds"][refund["id"]] = refund
        return refund, [("charge.refunded", refund)]

    def _resend(self, event_id: str, form: dict[str, str]) -> Written:
        event = self.state["events"].get(event_id)
        if event is None:
            raise _Refused(404, INVALID, f"no such event {event_id}")
        self._deliver(event)
        return event, []

    def _emit(self, kind: str, obj: Any) -> None:
        event: dict[str, Any] = {
            "id": "evt_" + secrets.token_hex(12),
            "type": kind,
            "created": int(time.time()),
            "data": {"object": dict(obj)},
            "livemode": False,
        }
        self.state["events"][event["id"]] = event
        self._deliver(event)

    def _deliver(self, event: dict[str, Any]) -> None:
        if not self.webhook_url:
            return
        task = asyncio.create_task(self._post_event(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_event(self, event: dict[str, Any]) -> None:
        payload = json.dumps(event).encode()
        for attempt in range(5):
            try:
                signature = sign_webhook(self.webhook_secret, payload)
                response = await self._http.post(
                    self.webhook_url,
                    content=payload,
                    headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
                )
                if response.status_code < 300:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2 * 2**attempt)

    def _save(self) -> None:
        write_private(self.state_file, json.dumps(self.state).encode())


def _integer(form: dict[str, str], name: str, default: int | None = None) -> int:
    if name not in form and default is not None:
        return default
    try:
        return int(form.get(name, ""))
    except ValueError:
        raise _Refused(400, INVALID, f"{name} must be an integer") from None


class _Guard:
    """Bearer auth before anything else; `X-Relaybus-Sandbox: true` on every answer."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Relaybus-Sandbox", "true")
            await send(message)

        if Headers(scope=scope).get("authorization") != f"Bearer {self.api_key}":
            refused = _Refused(401, "authentication_error", "invalid API key (this is the sandbox)")
            await refused.response()(scope, receive, labelled)
            return
        await self.app(scope, receive, labelled)


async def serve_sandbox(sandbox: Sandbox, host: str = LOOPBACK, port: int = 0) -> HttpServer:
    """Start the HTTP server; the caller owns it (`server.close()`, or `async with`)."""
    return await serve_app(sandbox.app(), host, port)
