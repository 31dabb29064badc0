"""Payments' settings: the payment provider the webhook receiver and the payment tools reach."""

from __future__ import annotations

from pydantic import Field

from relaybus.bus.settings import LayerSettings


class PaymentsSettings(LayerSettings):
    """RELAYBUS_PAYMENTS_*."""

    # a Stripe-compatible API (the sandbox: `relaybus payments sandbox`)
    payments_url: str | None = None
    payments_api_key: str | None = None
    payments_webhook_secret: str | None = None
    # in minor units: a run's payments above this wait for a human to approve
    payments_approval_over: int = Field(default=10_000, ge=0)
