"""`relaybus dev payments`: a SANDBOX payment provider — moves no money — speaking the Stripe
HTTP shapes the Stripe adapter uses, as its own process with its state persisted in a JSON file.

PaymentIntents with manual capture (amount ≤ 1,000,000 minor units; payee `declined` is always
declined), capture (≤ the authorized amount), cancel, refunds (never above what was captured),
`Idempotency-Key` on every write (same key, same body: the first answer; another body: 400),
Bearer auth, and signed webhooks (`Stripe-Signature`) for every state change, sent to
`--webhook-url`. Every response carries `livemode: false` and `X-Relaybus-Sandbox: true`.
`POST /sandbox/refunds` refunds as if from the provider's dashboard; `POST
/sandbox/events/{id}/resend` delivers an event again (to exercise duplicate handling).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx

from relaybus.bus.httpserve import serve_json
from relaybus.bus.private import write_private

from .provider import sign_webhook

MAX_AMOUNT = 1_000_000
LABEL = {"X-Relaybus-Sandbox": "true"}


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

    async def route(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "authentication_error", "invalid API key (this is the sandbox)")
        form = dict(parse_qsl(raw.decode())) if raw else {}
        parts = path.split("?")[0].strip("/").split("/")
        key = headers.get("idempotency-key", "")
        if method == "GET" and parts[:2] == ["v1", "payment_intents"] and len(parts) == 3:
            intent = self.state["intents"].get(parts[2])
            return (
                (200, intent, LABEL)
                if intent
                else _error(404, "invalid_request_error", f"no such payment_intent {parts[2]}")
            )
        if method != "POST":
            return _error(404, "invalid_request_error", f"no route {method} {path}")
        if key:
            fingerprint = hashlib.sha256(f"{path}\0{sorted(form.items())}".encode()).hexdigest()
            seen = self.state["keys"].get(key)
            if seen is not None:
                if seen["fingerprint"] != fingerprint:
                    return _error(
                        400,
                        "idempotency_error",
                        f"Idempotency-Key {key} was used with other parameters",
                    )
                return seen["status"], seen["body"], {**LABEL, "Idempotent-Replayed": "true"}
        status, body, events = self._write(parts, form)
        if key and status < 500:
            self.state["keys"][key] = {"fingerprint": fingerprint, "status": status, "body": body}
        for kind, obj in events:
            self._emit(kind, obj)
        self._save()
        return status, body, LABEL

    def _write(
        self, parts: list[str], form: dict[str, str]
    ) -> tuple[int, Any, list[tuple[str, Any]]]:
        intents = self.state["intents"]
        if parts == ["v1", "payment_intents"]:
            try:
                amount = int(form.get("amount", ""))
            except ValueError:
                return (*_error(400, "invalid_request_error", "amount must be an integer")[:2], [])
            currency = form.get("currency", "")
            if not 0 < amount <= MAX_AMOUNT or len(currency) != 3:
                return (
                    *_error(
                        400,
                        "invalid_request_error",
                        f"amount must be 1..{MAX_AMOUNT} and currency 3 letters",
                    )[:2],
                    [],
                )
            metadata = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
            if metadata.get("payee") == "declined":
                return (*_error(402, "card_error", "Your card was declined.")[:2], [])
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
            intents[created["id"]] = created
            return 200, created, [("payment_intent.amount_capturable_updated", created)]
        if parts[:2] == ["v1", "payment_intents"] and len(parts) == 4:
            intent = intents.get(parts[2])
            if intent is None:
                return (
                    *_error(404, "invalid_request_error", f"no such payment_intent {parts[2]}")[:2],
                    [],
                )
            if parts[3] == "capture":
                amount = int(form.get("amount_to_capture", intent["amount"]))
                if intent["status"] != "requires_capture":
                    return (
                        *_error(
                            400,
                            "invalid_request_error",
                            f"payment_intent is {intent['status']}; only requires_capture can be captured",
                        )[:2],
                        [],
                    )
                if not 0 < amount <= intent["amount"]:
                    return (
                        *_error(
                            400,
                            "invalid_request_error",
                            f"amount_to_capture must be 1..{intent['amount']}",
                        )[:2],
                        [],
                    )
                intent.update(status="succeeded", amount_received=amount)
                return 200, intent, [("payment_intent.succeeded", intent)]
            if parts[3] == "cancel":
                if intent["status"] != "requires_capture":
                    return (
                        *_error(
                            400,
                            "invalid_request_error",
                            f"payment_intent is {intent['status']}; it cannot be canceled",
                        )[:2],
                        [],
                    )
                intent["status"] = "canceled"
                return 200, intent, [("payment_intent.canceled", intent)]
        if parts in (["v1", "refunds"], ["sandbox", "refunds"]):
            intent = intents.get(form.get("payment_intent", ""))
            if intent is None or intent["status"] != "succeeded":
                return (
                    *_error(
                        400,
                        "invalid_request_error",
                        "only a captured (succeeded) payment_intent can be refunded",
                    )[:2],
                    [],
                )
            left = intent["amount_received"] - intent["amount_refunded"]
            amount = int(form.get("amount", left))
            if not 0 < amount <= left:
                return (
                    *_error(
                        400,
                        "invalid_request_error",
                        f"refund of {amount} is more than the {left} left to refund",
                    )[:2],
                    [],
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
            return 200, refund, [("charge.refunded", refund)]
        if parts[:2] == ["sandbox", "events"] and len(parts) == 4 and parts[3] == "resend":
            event = self.state["events"].get(parts[2])
            if event is None:
                return (*_error(404, "invalid_request_error", f"no such event {parts[2]}")[:2], [])
            self._deliver(event)
            return 200, event, []
        return (*_error(404, "invalid_request_error", f"no route POST /{'/'.join(parts)}")[:2], [])

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


def _error(status: int, kind: str, message: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"type": kind, "message": message}}, LABEL


async def serve_sandbox(sandbox: Sandbox, host: str, port: int) -> asyncio.Server:
    return await serve_json(sandbox.route, host, port)
