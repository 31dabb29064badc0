"""The dev HTTP servers' stack (Starlette on uvicorn), over real loopback HTTP: body limits,
chunked bodies, keep-alive, HEAD, 404/405, malformed requests, graceful shutdown."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relaybus.bus import RelayError
from relaybus.bus.httpserve import HttpServer, json_app, serve_app

LIMIT = 1000


async def echo(request: Request) -> Response:
    return JSONResponse({"size": len(await request.body())})


async def slow(request: Request) -> Response:
    await asyncio.sleep(0.5)
    return JSONResponse({"slow": True})


async def hello(request: Request) -> Response:
    return JSONResponse({"hello": "world"})


APP = json_app(
    [
        Route("/echo", echo, methods=["POST"]),
        Route("/slow", slow, methods=["GET"]),
        Route("/hello", hello, methods=["GET"]),
    ]
)


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    async with await serve_app(APP, max_body=LIMIT) as served:
        yield served


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_it_listens_on_loopback_on_a_free_port(server: HttpServer) -> None:
    host, port = server.sockets[0].getsockname()[:2]
    assert host == "127.0.0.1" and port == server.port > 0


async def test_bodies_are_limited_whether_declared_or_chunked(server: HttpServer) -> None:
    url = f"http://127.0.0.1:{server.port}/echo"
    async with httpx.AsyncClient() as http:
        fits = await http.post(url, content=b"x" * LIMIT)
        assert fits.status_code == 200 and fits.json() == {"size": LIMIT}
        chunked = await http.post(url, content=chunks(b"x" * 600, b"y" * 400))
        assert chunked.request.headers["transfer-encoding"] == "chunked"
        assert chunked.status_code == 200 and chunked.json() == {"size": LIMIT}
        declared = await http.post(url, content=b"x" * (LIMIT + 1))
        assert (
            declared.status_code == 413 and "body too large" in declared.json()["error"]["message"]
        )
        streamed = await http.post(url, content=chunks(*[b"x" * 600] * 50))
        assert streamed.status_code == 413 and streamed.headers["connection"] == "close"
        assert (await http.post(url, content=b"ok")).json() == {"size": 2}


async def test_a_client_waiting_for_100_continue_is_refused_before_it_sends(
    server: HttpServer,
) -> None:
    head = (
        f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT * 100}\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    answer = await raw_exchange(server.port, head.encode())
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer


async def test_routing_errors_answer_json(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        missing = await http.get("/nowhere")
        assert missing.status_code == 404
        assert missing.json() == {"error": {"message": "no route GET /nowhere"}}
        wrong = await http.get("/echo")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        assert "method not allowed" in wrong.json()["error"]["message"]
        head = await http.head("/hello")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(b'{"hello":"world"}')


async def test_a_malformed_request_gets_400(server: HttpServer) -> None:
    assert (await raw_exchange(server.port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(
        b"HTTP/1.1 400 "
    )


async def test_one_connection_serves_several_requests(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(3):
            writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert await reader.readexactly(len(b'{"hello":"world"}')) == b'{"hello":"world"}'
    finally:
        writer.close()


async def test_closing_lets_a_request_in_flight_finish_and_frees_the_port() -> None:
    server = await serve_app(APP)
    async with httpx.AsyncClient() as http:
        pending = asyncio.create_task(http.get(f"http://127.0.0.1:{server.port}/slow"))
        await asyncio.sleep(0.2)
        server.close()
        assert (await pending).json() == {"slow": True}
    await server.wait_closed()
    with socket.create_server(("127.0.0.1", server.port)):
        pass


async def test_a_port_in_use_is_a_clear_error(server: HttpServer) -> None:
    with pytest.raises(RelayError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        await serve_app(APP, port=server.port)
