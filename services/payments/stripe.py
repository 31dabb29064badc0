"""A payment provider over Stripe's HTTP API (https://docs.stripe.com/api): PaymentIntents with
manual capture, cancel, refunds, `Idempotency-Key` on every write, form-encoded bodies, Bearer
auth, `Stripe-Signature` webhooks. `base_url` points it at Stripe or at the sandbox."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx
import msgspec

from relaybus.bus import ConfigError, UpstreamFailed
from relaybus.services.payments.errors import PaymentRefused

from .provider import PaymentIntent, Refund, WebhookEvent, verify_webhook

STRIPE_API = "https://api.stripe.com"


class StripeProvider:
    name = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = STRIPE_API,
        webhook_secret: str = "",
        timeout_s: float = 30.0,
    ) -> None:
        if not api_key:
            raise ConfigError("no payments API key: set RELAYBUS_PAYMENTS_API_KEY")
        self.base_url = base_url.rstrip("/")
        self.webhook_secret = webhook_secret
        self._http = httpx.AsyncClient(
            timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"}
        )

    async def __aenter__(self) -> StripeProvider:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    async def authorize(
        self,
        amount: int,
        currency: str,
        payee: str,
        *,
        idempotency_key: str,
        metadata: dict[str, str],
        description: str = "",
    ) -> PaymentIntent:
        form = {
            "amount": str(amount),
            "currency": currency.lower(),
            "capture_method": "manual",
            "confirm": "true",
            "payment_method": "pm_card_visa",
            "description": description or f"payment to {payee}",
            "metadata[payee]": payee,
            **{f"metadata[{k}]": v for k, v in metadata.items()},
        }
        return await self._post("/v1/payment_intents", form, idempotency_key, PaymentIntent)

    async def capture(self, intent_id: str, amount: int, *, idempotency_key: str) -> PaymentIntent:
        form = {"amount_to_capture": str(amount)}
        path = f"/v1/payment_intents/{intent_id}/capture"
        return await self._post(path, form, idempotency_key, PaymentIntent)

    async def void(self, intent_id: str, *, idempotency_key: str) -> PaymentIntent:
        path = f"/v1/payment_intents/{intent_id}/cancel"
        return await self._post(path, {}, idempotency_key, PaymentIntent)

    async def refund(self, intent_id: str, amount: int, *, idempotency_key: str) -> Refund:
        form = {"payment_intent": intent_id, "amount": str(amount)}
        return await self._post("/v1/refunds", form, idempotency_key, Refund)

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        response = await self._send("GET", f"/v1/payment_intents/{intent_id}", None, "")
        return _decode(response, PaymentIntent)

    def parse_webhook(self, payload: bytes, headers: dict[str, str]) -> WebhookEvent:
        if not self.webhook_secret:
            raise ConfigError("no webhook secret: set RELAYBUS_PAYMENTS_WEBHOOK_SECRET")
        return verify_webhook(self.webhook_secret, payload, headers.get("stripe-signature", ""))

    async def _post(self, path: str, form: dict[str, str], key: str, into: type[Any]) -> Any:
        return _decode(await self._send("POST", path, form, key), into)

    async def _send(
        self, method: str, path: str, form: dict[str, str] | None, key: str
    ) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        url = self.base_url + path
        for attempt in range(3):  # same Idempotency-Key: a repeat can never charge twice
            try:
                response = await self._http.request(method, url, data=form, headers=headers)
            except httpx.TransportError as exc:
                if attempt == 2:
                    raise UpstreamFailed(
                        f"payment provider unreachable at {url}: {exc!r}"
                    ) from None
                continue
            if response.status_code < 500 and response.status_code != 429:
                break
        if response.status_code >= 500 or response.status_code == 429:
            raise UpstreamFailed(f"payment provider answered {response.status_code} at {path}")
        if response.status_code >= 400:
            raise PaymentRefused(f"payment provider refused {method} {path}: {_message(response)}")
        return response


def _decode(response: httpx.Response, into: type[Any]) -> Any:
    try:
        return msgspec.json.decode(response.content, type=into)
    except msgspec.DecodeError as exc:
        raise UpstreamFailed(f"payment provider sent an unexpected body: {exc}") from None


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
