"""The payment-provider interface, the objects it speaks (Stripe's shapes), webhook signatures."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, Protocol

import msgspec

from relaybus.services.payments.errors import PaymentRefused

SIGNATURE_TOLERANCE_S = 300.0


class PaymentIntent(msgspec.Struct, kw_only=True):
    """A card authorization: `requires_capture` → `succeeded` (captured) or `canceled`."""

    id: str
    amount: int  # minor units (cents)
    currency: str
    status: str
    amount_received: int = 0
    amount_refunded: int = 0
    metadata: dict[str, str] = {}
    object: str = "payment_intent"


class Refund(msgspec.Struct, kw_only=True):
    id: str
    amount: int
    payment_intent: str
    status: str = "succeeded"
    object: str = "refund"


class WebhookEvent(msgspec.Struct, kw_only=True):
    """`{"id": "evt_…", "type": "charge.refunded", "data": {"object": {…}}}`"""

    id: str
    type: str
    data: dict[str, Any]
    created: int = 0


class PaymentProvider(Protocol):
    """What relaybus needs from a payment provider. Every call that changes money takes an
    idempotency key: the same key and arguments give the first answer again, never a second
    charge."""

    name: str

    async def authorize(
        self,
        amount: int,
        currency: str,
        payee: str,
        *,
        idempotency_key: str,
        metadata: dict[str, str],
        description: str = "",
    ) -> PaymentIntent: ...

    async def capture(
        self, intent_id: str, amount: int, *, idempotency_key: str
    ) -> PaymentIntent: ...

    async def void(self, intent_id: str, *, idempotency_key: str) -> PaymentIntent: ...

    async def refund(self, intent_id: str, amount: int, *, idempotency_key: str) -> Refund: ...

    async def retrieve(self, intent_id: str) -> PaymentIntent: ...

    def parse_webhook(self, payload: bytes, headers: dict[str, str]) -> WebhookEvent: ...


def sign_webhook(secret: str, payload: bytes, at: int | None = None) -> str:
    """The `Stripe-Signature` header value for `payload`: `t=…,v1=HMAC-SHA256(secret, "t.payload")`."""
    at = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def verify_webhook(
    secret: str, payload: bytes, header: str, *, tolerance_s: float = SIGNATURE_TOLERANCE_S
) -> WebhookEvent:
    """The event in `payload` if `header` signs it with `secret` recently enough, else
    PaymentRefused saying why."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        at = int(parts["t"][0])
    except (KeyError, ValueError):
        raise PaymentRefused("webhook signature header has no timestamp (t=…)") from None
    if abs(time.time() - at) > tolerance_s:
        raise PaymentRefused(
            f"webhook signature is {abs(time.time() - at):.0f}s old; replay refused"
        )
    expected = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, v) for v in parts.get("v1", [])):
        raise PaymentRefused("webhook signature does not match: refused")
    try:
        return msgspec.json.decode(payload, type=WebhookEvent)
    except msgspec.DecodeError as exc:
        raise PaymentRefused(f"webhook payload is not an event: {exc}") from None
