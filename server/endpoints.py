"""HTTP only: read and check the request, call the service, write JSON with orjson.

The two scoring routes are plain ASGI (ScoringRoutes), ahead of Starlette's
router: on the hot path the router, the Request and Response objects and the
exception middleware cost about as much as parsing, validating and scoring a
transaction. Everything else is ordinary Starlette endpoints.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from server.auth import HEADER, ApiKeyGuard
from server.errors import (
    BadRequest,
    MethodNotAllowed,
    NotReady,
    PayloadTooLarge,
    ServingError,
    UnsupportedMediaType,
)
from server.payloads import parse_json
from server.service import ScoringService

JSON_HEADER = (b"content-type", b"application/json")
API_KEY = HEADER.encode()


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ServerState:
    """What the lifespan fills in; endpoints answer 503 until `service` is set."""

    def __init__(self) -> None:
        self.service: ScoringService | None = None

    def ready_service(self) -> ScoringService:
        if self.service is None:
            raise NotReady("the model is not loaded yet", headers={"Retry-After": "1"})
        return self.service


async def read_body(declared: bytes | None, receive: Receive, limit: int) -> bytes:
    """The body, refusing anything over `limit` bytes before or while it arrives."""
    if declared is not None:
        if not (declared.isdigit() and len(declared) <= 18):
            raise BadRequest("Content-Length is not a valid length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Nobody is left to answer; the error only ends the request quietly.
            raise BadRequest("the client closed the connection before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # chunked bodies declare no length
            raise PayloadTooLarge(f"the body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def require_json(content_type: bytes | None) -> None:
    media_type = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media_type != b"application/json":
        raise UnsupportedMediaType("send the body as Content-Type: application/json")


async def send_json(
    send: Send, status: int, content: Any, headers: dict[str, str] | None = None
) -> None:
    body = orjson.dumps(content)
    raw = [JSON_HEADER, (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def route_path(scope: Scope) -> str:
    """The path below the app's mount point: uvicorn's --root-path prefixes scope["path"]."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class ScoringRoutes:
    """POST /v1/score and /v1/score/batch; every other request goes on to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        state: ServerState,
        guard: ApiKeyGuard,
        max_body_bytes: int,
        max_batch_body_bytes: int,
    ) -> None:
        self.app = app
        self.state = state
        self.guard = guard
        self.routes: dict[str, tuple[int, Callable[[ScoringService, Any], Awaitable[Any]]]] = {
            "/v1/score": (max_body_bytes, ScoringService.score),
            "/v1/score/batch": (max_batch_body_bytes, ScoringService.score_batch),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(route_path(scope)) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        limit, score = route
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(
                    f"{scope['method']} is not allowed on {scope['path']}",
                    headers={"Allow": "POST"},
                )
            # ASGI servers give lower-case names. Reversed, so that a repeated header keeps
            # its first value, as Starlette's Headers.get does on the other routes.
            headers = dict(reversed(scope["headers"]))
            presented = headers.get(API_KEY)
            # Authenticate before reading anything, so strangers learn nothing from validation.
            self.guard.check(presented.decode("latin-1") if presented is not None else None)
            service = self.state.ready_service()
            require_json(headers.get(b"content-type"))
            body = await read_body(headers.get(b"content-length"), receive, limit)
            result = await score(service, parse_json(body))
        except ServingError as error:
            await send_json(send, error.status_code, error.to_body(), error.headers)
            return
        await send_json(send, 200, result)


class Endpoints:
    def __init__(self, state: ServerState, guard: ApiKeyGuard) -> None:
        self.state = state
        self.guard = guard

    async def live(self, request: Request) -> Response:
        return JSONResponse({"status": "live"})

    async def ready(self, request: Request) -> Response:
        service = self.state.ready_service()
        return JSONResponse(
            {"status": "ready", "model": service.info.name, "model_version": service.info.version}
        )

    async def model(self, request: Request) -> Response:
        self.guard.check(request.headers.get(HEADER))
        return JSONResponse(self.state.ready_service().describe())

    async def models(self, request: Request) -> Response:
        """Every model version served; one for now, the model repository adds more."""
        self.guard.check(request.headers.get(HEADER))
        return JSONResponse({"models": [self.state.ready_service().describe()]})
