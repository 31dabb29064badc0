"""`relaybus payments sandbox` (the sandbox provider) and `relaybus payments webhooks` (the
webhook receiver), each a foreground process."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from relaybus.bus import Bus, ConfigError, Settings

from .settings import PaymentsSettings


async def sandbox(args: argparse.Namespace, settings: Settings) -> int:
    from relaybus.bus.httpserve import serve_until_stopped

    from .sandbox import Sandbox, serve_sandbox

    del settings
    box = Sandbox(args.state, args.api_key, args.webhook_url, args.webhook_secret)
    try:
        return await serve_until_stopped(
            await serve_sandbox(box, args.host, args.port),
            lambda port: (
                f"payment SANDBOX (moves no money) at http://{args.host}:{port} — "
                f"RELAYBUS_PAYMENTS_URL=http://{args.host}:{port}"
            ),
        )
    finally:
        await box.aclose()


async def webhooks(args: argparse.Namespace, settings: Settings) -> int:
    from relaybus.bus.httpserve import serve_app, serve_until_stopped

    from .stripe import StripeProvider
    from .webhooks import WebhookReceiver

    payments = PaymentsSettings.of(settings)
    if not payments.payments_url or not payments.payments_webhook_secret:
        raise ConfigError(
            "the webhook receiver needs RELAYBUS_PAYMENTS_URL, RELAYBUS_PAYMENTS_API_KEY and "
            "RELAYBUS_PAYMENTS_WEBHOOK_SECRET"
        )
    provider = StripeProvider(
        payments.payments_api_key or "",
        base_url=payments.payments_url,
        webhook_secret=payments.payments_webhook_secret,
    )
    async with provider, Bus(settings, name="relaybus-payments-webhooks") as bus:
        receiver = await WebhookReceiver.open(bus, provider)
        return await serve_until_stopped(
            await serve_app(receiver.app(), args.host, args.port),
            lambda port: (
                f"payment webhooks at http://{args.host}:{port}/webhooks — "
                f"webhook_url=http://{args.host}:{port}/webhooks"
            ),
        )


def register(sub: Any) -> None:
    payments = sub.add_parser("payments", help="the payment sandbox and webhook receiver")
    cmds = payments.add_subparsers(dest="payments_cmd", required=True)
    p = cmds.add_parser("sandbox", help="a SANDBOX Stripe-compatible provider (moves no money)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument("--state", type=Path, default=Path("payments-sandbox.json"))
    p.add_argument("--api-key", default="sk_test_sandbox")
    p.add_argument("--webhook-url", default="", help="where to POST signed events")
    p.add_argument("--webhook-secret", default="whsec_sandbox")
    p.set_defaults(func=sandbox)
    p = cmds.add_parser("webhooks", help="receive provider webhooks and apply them to the ledger")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.set_defaults(func=webhooks)
