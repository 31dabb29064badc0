"""The scripted model over real loopback HTTP: chunked requests, the body limit, its routes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from relaybus.agents.llm import ScriptedModel, serve_model
from relaybus.bus.httpserve import MAX_BODY


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with await serve_model(ScriptedModel(), "127.0.0.1", 0) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}/v1") as client:
            yield client


async def test_a_chunked_chat_completion_is_answered(http: httpx.AsyncClient) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello there"}]})

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7].encode()

    response = await http.post("/chat/completions", content=chunks())
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 200
    answer = response.json()
    assert answer["system_fingerprint"] == "relaybus-scripted"
    assert answer["choices"][0]["message"]["content"] == "[scripted model] hello there"


async def test_an_oversized_body_gets_413(http: httpx.AsyncClient) -> None:
    huge = {"messages": [{"role": "user", "content": "x" * MAX_BODY}]}
    response = await http.post("/chat/completions", json=huge)
    assert response.status_code == 413
    assert "body too large" in response.json()["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536

    assert (await http.post("/chat/completions", content=chunks())).status_code == 413


async def test_its_routes_and_their_errors(http: httpx.AsyncClient) -> None:
    models = await http.get("/models")
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "scripted"
    unprefixed = await http.post(
        str(http.base_url.copy_with(path="/chat/completions")),
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    assert unprefixed.status_code == 200
    assert (await http.get("/chat/completions")).status_code == 405
    assert (await http.post("/completions", json={})).status_code == 404
    not_json = await http.post("/chat/completions", content=b"{nope")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]["message"]
    not_object = await http.post("/chat/completions", json=[1])
    assert not_object.status_code == 400
