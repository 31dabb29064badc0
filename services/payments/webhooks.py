"""The webhook receiver: provider events, signature-verified, applied to the ledger once.

A refund or cancellation made at the provider (its dashboard, a dispute) reaches the ledger
here. Each event is applied through ledger operations whose ids derive from the provider's
objects (`refund-<re_id>`, `void-<payment>`) — the same ids the payment tools use — so an event
delivered twice, or one describing what a tool already recorded, changes nothing the second
time. Processed event ids are kept in the `payment_events` KV bucket.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relaybus.bus import Bus, RelayError
from relaybus.bus.httpserve import json_app, json_error
from relaybus.bus.kv import Bucket, RevisionConflict
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import LedgerError
from relaybus.services.payments.errors import PaymentRefused

from .provider import PaymentProvider, WebhookEvent

log = logging.getLogger("relaybus.payments")
MICRO_PER_MINOR = 10_000


class WebhookReceiver:
    def __init__(self, bus: Bus, provider: PaymentProvider, seen: Bucket) -> None:
        self.bus = bus
        self.provider = provider
        self.seen = seen
        self.ledger = LedgerClient(bus)

    @classmethod
    async def open(cls, bus: Bus, provider: PaymentProvider) -> WebhookReceiver:
        return cls(bus, provider, await Bucket.open(bus, bus.subjects.bucket("payment_events")))

    def app(self) -> Starlette:
        """`POST /webhooks`: a signed provider event, answered 200 once applied (or a duplicate),
        400 if its signature does not verify, 503 if it cannot be applied yet."""
        return json_app([Route("/webhooks", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> Response:
        try:
            event = self.provider.parse_webhook(await request.body(), dict(request.headers))
        except PaymentRefused as exc:
            log.warning("webhook refused: %s", exc)
            return json_error(400, str(exc))
        try:
            return JSONResponse(await self.apply(event))
        except RelayError as exc:  # the provider retries later; nothing was marked processed
            log.warning("webhook %s not applied yet: %s", event.id, exc)
            return json_error(503, str(exc))

    async def apply(self, event: WebhookEvent) -> dict[str, Any]:
        """Apply `event` once; {"event", "applied": bool, "effect"}."""
        if await self.seen.get(event.id) is not None:
            return {"event": event.id, "applied": False, "effect": "duplicate"}
        effect = await self._effect(event)
        try:
            await self.seen.create(
                event.id, msgspec.json.encode({"type": event.type, "effect": effect})
            )
        except RevisionConflict:
            return {"event": event.id, "applied": False, "effect": "duplicate"}
        log.info("webhook %s %s: %s", event.id, event.type, effect)
        return {"event": event.id, "applied": True, "effect": effect}

    async def _effect(self, event: WebhookEvent) -> str:
        obj = event.data.get("object") or {}
        if event.type == "charge.refunded":
            intent = await self.provider.retrieve(str(obj.get("payment_intent", "")))
            payment = intent.metadata.get("relaybus_payment", "")
            if not payment:
                return "ignored: not a relaybus payment"
            amount = int(obj.get("amount", 0)) * MICRO_PER_MINOR
            try:
                await self.ledger.refund(f"refund-{obj['id']}", payment, amount)
            except LedgerError as exc:
                return f"refused by the ledger: {exc}"
            return f"refunded {obj.get('amount')} on {payment}"
        if event.type == "payment_intent.canceled":
            payment = dict(obj.get("metadata") or {}).get("relaybus_payment", "")
            if not payment:
                return "ignored: not a relaybus payment"
            try:
                await self.ledger.void(f"void-{payment}", payment)
            except LedgerError as exc:
                return f"refused by the ledger: {exc}"
            return f"voided {payment}"
        return "recorded"
