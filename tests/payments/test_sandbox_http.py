"""The payment sandbox in-process over real loopback HTTP: auth, the label, idempotency keys,
refusals, routing. (tests/payments/test_payments.py drives it as its own process.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relaybus.services.payments.sandbox import Sandbox, serve_sandbox

KEY = "sk_test_unit"


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    box = Sandbox(tmp_path / "sandbox.json", KEY)
    try:
        async with await serve_sandbox(box) as server:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{server.port}",
                headers={"Authorization": f"Bearer {KEY}"},
            ) as client:
                yield client
    finally:
        await box.aclose()


INTENT = {"amount": "4200", "currency": "usd", "metadata[payee]": "acme-air"}


async def test_every_answer_is_labelled_and_needs_the_key(http: httpx.AsyncClient) -> None:
    for response in (
        await http.get("/v1/payment_intents/pi_x", headers={"Authorization": "Bearer nope"}),
        await http.get("/nowhere", headers={"Authorization": "Bearer nope"}),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.headers["x-relaybus-sandbox"] == "true"
    for response in (await http.get("/nowhere"), await http.get("/v1/refunds")):
        assert response.status_code in (404, 405)
        assert response.headers["x-relaybus-sandbox"] == "true"


async def test_an_intent_is_created_captured_refunded_and_replayed_by_key(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    key = {"Idempotency-Key": "k1"}
    created = await http.post("/v1/payment_intents", data=INTENT, headers=key)
    assert created.status_code == 200 and created.json()["status"] == "requires_capture"
    intent = created.json()["id"]
    again = await http.post("/v1/payment_intents", data=INTENT, headers=key)
    assert again.json()["id"] == intent and again.headers["idempotent-replayed"] == "true"
    other = await http.post("/v1/payment_intents", data={**INTENT, "amount": "1"}, headers=key)
    assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
    fetched = await http.get(f"/v1/payment_intents/{intent}")
    assert fetched.json()["amount"] == 4200 and fetched.json()["livemode"] is False
    captured = await http.post(
        f"/v1/payment_intents/{intent}/capture", data={"amount_to_capture": "4000"}
    )
    assert captured.json()["status"] == "succeeded" and captured.json()["amount_received"] == 4000
    over = await http.post("/v1/refunds", data={"payment_intent": intent, "amount": "5000"})
    assert over.status_code == 400 and "more than the 4000 left" in over.json()["error"]["message"]
    refund = await http.post("/sandbox/refunds", data={"payment_intent": intent, "amount": "1000"})
    assert refund.json()["amount"] == 1000
    state = json.loads((tmp_path / "sandbox.json").read_text())
    assert state["intents"][intent]["amount_refunded"] == 1000 and "k1" in state["keys"]
    kinds = sorted(e["type"] for e in state["events"].values())
    assert kinds == [
        "charge.refunded",
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
    ]


async def test_bad_requests_are_refused_not_dropped(http: httpx.AsyncClient) -> None:
    declined = await http.post(
        "/v1/payment_intents", data={**INTENT, "metadata[payee]": "declined"}
    )
    assert declined.status_code == 402 and declined.json()["error"]["type"] == "card_error"
    not_number = await http.post("/v1/payment_intents", data={**INTENT, "amount": "lots"})
    assert not_number.status_code == 400
    assert not_number.json()["error"]["message"] == "amount must be an integer"
    intent = (await http.post("/v1/payment_intents", data=INTENT)).json()["id"]
    bad_capture = await http.post(
        f"/v1/payment_intents/{intent}/capture", data={"amount_to_capture": "x"}
    )
    assert bad_capture.status_code == 400
    missing = await http.post("/v1/payment_intents/pi_none/cancel")
    assert missing.status_code == 404 and "no such payment_intent" in missing.text
    assert (await http.post(f"/v1/payment_intents/{intent}/cancel")).json()["status"] == "canceled"
    twice = await http.post(f"/v1/payment_intents/{intent}/cancel")
    assert twice.status_code == 400 and "cannot be canceled" in twice.text
    assert (await http.post("/sandbox/events/evt_none/resend")).status_code == 404
