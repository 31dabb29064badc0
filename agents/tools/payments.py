"""Payment tools: money an agent moves on a user's behalf, within the delegation chain's limits.

    auth = await ctx.tool(authorize_payment, amount=4200, currency="USD", payee="acme-air")
    receipt = await pay(ctx, amount=4200, currency="USD", payee="acme-air")  # authorize,
                                                      # approval above the threshold, capture

The chain's `payments/charge` scope bounds every call (`max_amount=50000`, `currency=USD`,
`payee=acme-air|globex-hotels`, `category=travel`) and the run's total (`per_run_amount=80000`).
Each link's `per_run_amount` is a ledger cap on its own level: the user's on `payrun:<run>`, a
delegated one on `payrun:<run>:<branch>` (the branch: the delegation path down to that link), and
every payment holds against all the levels of its chain, so concurrent charges cannot exceed a
cap together and no sibling branch can lift it (a ledger cap only ever narrows).

Approval is decided on the run's cumulative payments (captured and authorized, all branches),
not per call: splitting a payment under RELAYBUS_PAYMENTS_APPROVAL_OVER does not avoid it.

Every payment is a two-phase ledger transfer mirrored at the provider — authorize (hold) →
capture, or void — with keys derived from the run, task and step: a retry or replay never
charges twice. Refunds go to the provider; the ledger records them from the provider's signed
webhook (refunds restore budgets, so an agent never writes them itself). Amounts are minor
units (cents); the ledger holds them as micro-units.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from relaybus.bus import ConfigError, Settings
from relaybus.services.identity.scopes import run_limit
from relaybus.services.ledger.client import LedgerClient
from relaybus.services.ledger.errors import BudgetExceeded
from relaybus.services.payments.errors import PaymentRefused
from relaybus.services.payments.provider import PaymentIntent
from relaybus.services.payments.settings import PaymentsSettings
from relaybus.services.payments.stripe import StripeProvider

from ..tool import tool

if TYPE_CHECKING:
    from ..context import Context

MICRO_PER_MINOR = 10_000  # 1 cent = 10,000 micro-units
HOLD_TTL_S = 7 * 24 * 3600.0  # like a card authorization


class Charge(BaseModel):
    amount: int = Field(gt=0, description="amount in minor units (cents)")
    currency: str = Field(pattern="^[A-Z]{3}$", description="ISO currency, e.g. USD")
    payee: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="merchant id")
    category: str = Field(default="general", pattern=r"^[a-z0-9_-]{1,32}$")
    description: str = Field(default="", max_length=200)


class PaymentRef(BaseModel):
    """An authorized payment, as authorize_payment described it; checked against the chain
    again (amount, currency, payee) and against the provider's record before anything moves."""

    payment: str = Field(description="the payment id authorize_payment returned")
    intent: str = Field(description="the provider's payment intent id")
    amount: int = Field(gt=0, description="minor units")
    currency: str = Field(pattern="^[A-Z]{3}$")
    payee: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")


def provider_for(settings: Settings) -> StripeProvider:
    payments = PaymentsSettings.of(settings)
    if not payments.payments_url:
        raise ConfigError(
            "no payment provider: set RELAYBUS_PAYMENTS_URL (https://api.stripe.com, or the "
            "sandbox `relaybus dev payments`) and RELAYBUS_PAYMENTS_API_KEY"
        )
    return StripeProvider(
        payments.payments_api_key or "",
        base_url=payments.payments_url,
        webhook_secret=payments.payments_webhook_secret or "",
    )


def _ledger(ctx: Context) -> LedgerClient:
    if ctx.ledger is None:
        raise ConfigError("payments need the ledger: set RELAYBUS_LEDGER=1")
    return ctx.ledger


def branch_caps(ctx: Context) -> list[tuple[str, int]]:
    """(ledger level, cap in minor units) for each link of the chain with a `per_run_amount`:
    the root link's (the user's, shared by every branch) on `payrun:<run>`, a delegated link's on
    `payrun:<run>:<branch>`, the branch named by the delegation path down to that link (user →
    agent → … → agent). Two delegations along the same path share a level, and its tightest
    cap."""
    chain = ctx.chain
    if chain is None or not chain.links:
        return []
    run_level = f"payrun:{ctx.run_id}"
    path = [chain.links[0].issuer]
    caps = []
    for index, link in enumerate(chain.links):
        path.append(link.subject)
        cap = run_limit(link.scopes, "payments/charge", "amount")
        if cap is None:
            continue
        branch = hashlib.blake2b("\n".join(path).encode(), digest_size=8).hexdigest()
        caps.append((run_level if index == 0 else f"{run_level}:{branch}", cap))
    return caps


@tool("payments/charge", name="authorize_payment")
async def authorize_payment(ctx: Context, args: Charge) -> dict[str, Any]:
    """Authorize (hold) a payment to a payee; it is captured later, or voided."""
    user = ctx.principal.removeprefix("user:")
    ledger = _ledger(ctx)
    payment = ctx.idempotency_key("payment")
    caps = branch_caps(ctx)
    levels = list(dict.fromkeys([f"payrun:{ctx.run_id}", *(level for level, _ in caps)]))
    for level, limit in caps:  # narrows only: a sibling's wider cap never lifts this one
        await ledger.cap(f"cap:{level}:{limit}", level, limit * MICRO_PER_MINOR)
    tags = {"run": ctx.run_id, "agent": ctx.agent, "payee": args.payee}
    try:
        await ledger.hold(
            payment,
            f"user:{user}",
            f"payee:{args.payee}",
            args.amount * MICRO_PER_MINOR,
            levels,
            currency=args.currency,
            ttl_s=HOLD_TTL_S,
            tags=tags,
        )
    except BudgetExceeded as exc:
        cap = min(limit for _, limit in caps) if caps else None
        reason = (
            f"{args.amount} {args.currency} to {args.payee} would exceed this run's payment "
            f"limit{f' of {cap}' if cap is not None else ''} ({exc})"
        )
        await _deny(ctx, reason, args)
        raise PaymentRefused(reason) from None
    paid = (await ledger.run_cost(ctx.run_id))["payments"]
    run_total = (int(paid["spent"]) + int(paid["held"])) // MICRO_PER_MINOR  # with this one
    async with provider_for(ctx.settings) as provider:
        try:
            intent = await provider.authorize(
                args.amount,
                args.currency,
                args.payee,
                idempotency_key=payment,
                metadata={"relaybus_payment": payment, "run": ctx.run_id, "user": user},
                description=args.description,
            )
        except PaymentRefused:
            await ledger.void(f"void-{payment}", payment)
            raise
    await ctx.audit("payments/authorize", tool="authorize_payment", detail=_detail(args, intent))
    return {
        "payment": payment,
        "intent": intent.id,
        "amount": args.amount,
        "currency": args.currency,
        "payee": args.payee,
        "status": "authorized",
        "run_total": run_total,
        "needs_approval": run_total > PaymentsSettings.of(ctx.settings).payments_approval_over,
    }


@tool("payments/charge", name="capture_payment")
async def capture_payment(ctx: Context, args: PaymentRef) -> dict[str, Any]:
    """Capture an authorized payment (at most the authorized amount)."""
    async with provider_for(ctx.settings) as provider:
        intent = await _own_intent(ctx, provider, args)
        intent = await provider.capture(
            args.intent, args.amount, idempotency_key=f"capture-{args.payment}"
        )
    await _ledger(ctx).capture(
        f"capture-{args.payment}",
        args.payment,
        args.amount * MICRO_PER_MINOR,
        currency=intent.currency.upper(),
        tags={"run": ctx.run_id, "agent": ctx.agent, "payee": args.payee},
    )
    return {"payment": args.payment, "status": "captured", "amount": intent.amount_received}


@tool("payments/charge", name="void_payment")
async def void_payment(ctx: Context, args: PaymentRef) -> dict[str, Any]:
    """Release an authorized payment without charging it."""
    async with provider_for(ctx.settings) as provider:
        await _own_intent(ctx, provider, args)
        await provider.void(args.intent, idempotency_key=f"void-{args.payment}")
    await _ledger(ctx).void(f"void-{args.payment}", args.payment)
    return {"payment": args.payment, "status": "voided"}


@tool("payments/refund", name="refund_payment")
async def refund_payment(ctx: Context, args: PaymentRef) -> dict[str, Any]:
    """Refund part or all of a captured payment (never more than was captured), at the provider.
    The ledger records it (`refund-<refund id>`) when the provider's signed `charge.refunded`
    event reaches the webhook receiver: a ledger refund restores budgets, so it is an
    operator's operation, which no agent sends."""
    _ledger(ctx)
    async with provider_for(ctx.settings) as provider:
        await _own_intent(ctx, provider, args)
        refund = await provider.refund(
            args.intent, args.amount, idempotency_key=ctx.idempotency_key("refund")
        )
    return {
        "payment": args.payment,
        "refund": refund.id,
        "amount": refund.amount,
        "ledger": "recorded from the provider's refund event",
    }


async def pay(ctx: Context, **charge: Any) -> dict[str, Any]:
    """Authorize, wait for a human once the run's payments together pass
    RELAYBUS_PAYMENTS_APPROVAL_OVER (`relaybus approve RUN --signal payment-… --data
    '"approve"'`; anything else rejects and voids), then capture."""
    auth = await ctx.tool(authorize_payment, charge)
    return await settle(ctx, auth)


async def settle(ctx: Context, auth: dict[str, Any]) -> dict[str, Any]:
    """Finish one authorization: approval if it needs one, then capture — or void if rejected."""
    ref = {k: auth[k] for k in ("payment", "intent", "amount", "currency", "payee")}
    if auth.get("needs_approval"):
        signal = f"payment-{auth['payment'][-10:].lower()}"
        ctx.log.info(
            "payment %s of %s %s waits for approval (the run's payments come to %s, over %s): "
            "relaybus approve %s --signal %s",
            ref["payment"],
            auth["amount"],
            auth["currency"],
            auth.get("run_total", auth["amount"]),
            PaymentsSettings.of(ctx.settings).payments_approval_over,
            ctx.run_id,
            signal,
        )
        decision = await ctx.wait_signal(signal)
        if decision not in ("approve", "approved", True, {"approve": True}):
            await ctx.tool(void_payment, ref)
            raise PaymentRefused(
                f"payment of {auth['amount']} {auth['currency']} to {auth['payee']} was rejected "
                f"({decision!r}); the authorization is voided"
            )
    return await ctx.tool(capture_payment, ref)


async def _own_intent(ctx: Context, provider: StripeProvider, args: PaymentRef) -> PaymentIntent:
    intent = await provider.retrieve(args.intent)
    user = ctx.principal.removeprefix("user:")
    meta = intent.metadata
    if meta.get("relaybus_payment") != args.payment or meta.get("user") != user:
        raise PaymentRefused(f"payment {args.payment} is not one of {user}'s payments")
    if meta.get("payee") != args.payee or intent.currency.upper() != args.currency:
        raise PaymentRefused(
            f"payment {args.payment} went to {meta.get('payee')} in {intent.currency.upper()}, "
            f"not {args.payee} in {args.currency}"
        )
    if args.amount > intent.amount:
        raise PaymentRefused(
            f"payment {args.payment} authorized {intent.amount}, not {args.amount}"
        )
    return intent


async def _deny(ctx: Context, reason: str, args: Charge) -> None:
    """Audit a refused payment (the worker audits scope denials; this is the run's limit)."""
    await ctx.audit(
        "payments/charge",
        decision="deny",
        tool="authorize_payment",
        reason=reason,
        detail={"amount": args.amount, "currency": args.currency, "payee": args.payee},
    )


def _detail(args: Charge, intent: PaymentIntent) -> dict[str, Any]:
    return {
        "amount": args.amount,
        "currency": args.currency,
        "payee": args.payee,
        "category": args.category,
        "intent": intent.id,
    }
