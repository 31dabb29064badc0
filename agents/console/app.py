"""The console's routes: the page (static, hand-written, no build step), a JSON API, and the
live events as server-sent events. Errors answer as `{"error": "..."}` with their status."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from relaybus.bus import Bus, ConnectionFailed, PermissionDenied, RelayError

from . import actions
from .access import (
    COOKIE,
    ConsoleError,
    Gate,
    VerdictInvalid,
    Viewer,
    is_loopback,
)
from .data import ConsoleData
from .middleware import LocalHostOnly, NoTokensInUrls

STATIC = Path(__file__).parent / "static"
FEED_BACKLOG_S = 900.0  # the feed page opens with the last 15 minutes


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get(COOKIE) or None


async def _viewer(request: Request) -> Viewer:
    gate: Gate = request.app.state.gate
    return await gate.viewer(_token(request))


def _data(request: Request) -> ConsoleData:
    data: ConsoleData = request.app.state.data
    return data


async def _body(request: Request) -> dict[str, Any]:
    """A POST's JSON body. JSON only, and from this console's own page when a browser says
    where it comes from: a cross-site form cannot approve anything."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ConsoleError("send JSON (Content-Type: application/json)")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise ConsoleError(f"a request from {origin} may not act on this console")
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as exc:
        raise ConsoleError(f"the body is not valid JSON: {exc.msg}") from None
    if not isinstance(body, dict):
        raise ConsoleError("the body must be a JSON object")
    return body


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def me(request: Request) -> Response:
    viewer = await _viewer(request)
    gate: Gate = request.app.state.gate
    return JSONResponse({"user": viewer.user, "operator": viewer.user is None, "local": gate.local})


async def login(request: Request) -> Response:
    token = str((await _body(request)).get("token", "")).strip()
    if not token:
        raise ConsoleError("give a user token (`relaybus identity user token USER` prints one)")
    gate: Gate = request.app.state.gate
    user = await gate.user_of(token)
    response = JSONResponse({"user": user}, headers={"Cache-Control": "no-store"})
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
    return response


async def logout(request: Request) -> Response:
    await _body(request)
    response = JSONResponse({"user": None})
    response.delete_cookie(COOKIE, path="/")
    return response


async def runs(request: Request) -> Response:
    viewer = await _viewer(request)
    try:
        limit = max(1, min(500, int(request.query_params.get("limit", "50"))))
    except ValueError:
        raise ConsoleError("limit must be a number") from None
    return JSONResponse(await _data(request).runs(viewer, limit))


async def run(request: Request) -> Response:
    viewer = await _viewer(request)
    return JSONResponse(await _data(request).run_view(viewer, request.path_params["run_id"]))


async def signal(request: Request) -> Response:
    """Approve or reject: the verdict the run receives is set here from the button (`true` for
    approve, `false` for reject), never taken from the request's data."""
    viewer = await _viewer(request)
    body = await _body(request)
    decision = body.get("decision")
    if decision not in ("approve", "reject"):
        raise VerdictInvalid('decision must be "approve" or "reject"')
    extra = sorted(set(body) - {"decision"})
    if extra:
        raise VerdictInvalid(
            f"the console sends only the verdict of its button (approve → true, reject → "
            f"false); {', '.join(map(repr, extra))} is not accepted. To send a signal with other "
            "data use `relaybus approve RUN --signal NAME --data JSON`"
        )
    done = await actions.decide(
        _data(request),
        viewer,
        request.path_params["run_id"],
        request.path_params["name"],
        approve=decision == "approve",
    )
    return JSONResponse(done)


def _reviews(request: Request) -> Any:
    from relaybus.agents.review import Reviews

    reviews = getattr(request.app.state, "reviews", None)
    if reviews is None:
        reviews = request.app.state.reviews = Reviews(request.app.state.data.bus)
    return reviews


async def _reviewer(request: Request) -> Any:
    from relaybus.agents.review import Reviewer

    viewer = await _viewer(request)
    return Reviewer.of(viewer.user, viewer.scopes)


async def review_queue(request: Request) -> Response:
    """Runs in review that this viewer's `review` scopes cover (all of them for the operator)."""
    items = await _reviews(request).items(await _reviewer(request))
    return JSONResponse([i.as_json() for i in items])


async def review_item(request: Request) -> Response:
    item = await _reviews(request).item(await _reviewer(request), request.path_params["run_id"])
    return JSONResponse(item.as_json())


async def review_verdict(request: Request) -> Response:
    reviewer = await _reviewer(request)
    body = await _body(request)
    extra = sorted(set(body) - {"verdict", "score", "label", "comment"})
    if extra:
        raise ConsoleError(f"a verdict has verdict, score, label and comment; not {extra}")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise ConsoleError("score must be a number from 0 to 1")
    verdict = await _reviews(request).score(
        reviewer,
        request.path_params["run_id"],
        str(body.get("verdict", "")),
        score=score,
        label=str(body.get("label", "")),
        comment=str(body.get("comment", "")),
    )
    return JSONResponse(msgspec.to_builtins(verdict))


async def review_request(request: Request) -> Response:
    reviewer = await _reviewer(request)
    body = await _body(request)
    reason = str(body.get("reason", "")).strip() or "requested from the console"
    done = await _reviews(request).request(reviewer, request.path_params["run_id"], reason)
    return JSONResponse(msgspec.to_builtins(done))


async def approvals(request: Request) -> Response:
    viewer = await _viewer(request)
    return JSONResponse(await _data(request).approvals(viewer))


async def costs(request: Request) -> Response:
    viewer = await _viewer(request)
    return JSONResponse(await _data(request).costs(viewer))


async def dlq(request: Request) -> Response:
    viewer = await _viewer(request)
    return JSONResponse(await _data(request).dead_letters(viewer))


async def dlq_replay(request: Request) -> Response:
    viewer = await _viewer(request)
    await _body(request)
    return JSONResponse(await actions.replay(_data(request), viewer, request.path_params["seq"]))


async def events(request: Request) -> Response:
    """Server-sent events: `event: relay` with one `watch --json` object per message."""
    viewer = await _viewer(request)
    query = request.query_params
    data = _data(request)
    run_id = query.get("run") or None
    if run_id is not None:
        await data.record(viewer, run_id)
    since = time.time() - FEED_BACKLOG_S
    resume = request.headers.get("last-event-id") or query.get("since")
    if resume:
        try:
            since = float(resume)
        except ValueError:
            raise ConsoleError("since must be epoch seconds") from None
    feed = data.events(
        viewer,
        run=run_id,
        agent=query.get("agent") or None,
        status=query.get("status") or None,
        since=since,
    )

    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        async for row in feed:
            if row is None:
                yield ": keepalive\n\n"
            else:
                yield f"id: {row['time']}\nevent: relay\ndata: {json.dumps(row)}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def relay_error(request: Request, exc: Exception) -> Response:
    from relaybus.agents.review import ReviewNotFound

    if isinstance(exc, ConsoleError):
        status = exc.status
    elif isinstance(exc, ReviewNotFound):
        status = 404
    elif isinstance(exc, PermissionDenied):
        status = 403
    elif isinstance(exc, ConnectionFailed):
        status = 503
    else:
        status = 400
    return JSONResponse({"error": str(exc)}, status_code=status)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return JSONResponse({"error": f"nothing at {request.url.path}"}, status_code=404)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


def create_app(bus: Bus, host: str, on_ready: Callable[[], None] | None = None) -> Starlette:
    """The console over an open bus connection; `host` is where it listens (loopback: no token
    needed; elsewhere every API call needs a user token)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/me", me),
            Route("/api/login", login, methods=["POST"]),
            Route("/api/logout", logout, methods=["POST"]),
            Route("/api/runs", runs),
            Route("/api/runs/{run_id}", run),
            Route("/api/runs/{run_id}/signals/{name}", signal, methods=["POST"]),
            Route("/api/approvals", approvals),
            Route("/api/reviews", review_queue),
            Route("/api/reviews/{run_id}", review_item),
            Route("/api/reviews/{run_id}/verdict", review_verdict, methods=["POST"]),
            Route("/api/reviews/{run_id}/request", review_request, methods=["POST"]),
            Route("/api/costs", costs),
            Route("/api/dlq", dlq),
            Route("/api/dlq/{seq:int}/replay", dlq_replay, methods=["POST"]),
            Route("/api/events", events),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={RelayError: relay_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.gate = Gate(bus, host)
    app.state.data = ConsoleData(bus)
    if is_loopback(host):
        app.add_middleware(LocalHostOnly)
    app.add_middleware(NoTokensInUrls)  # added last: the outermost check
    return app
