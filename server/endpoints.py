"""HTTP only: read and check the request, call the service, write JSON with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from server.auth import HEADER, ApiKeyGuard
from server.errors import BadRequest, NotReady, PayloadTooLarge, UnsupportedMediaType
from server.payloads import parse_json
from server.service import ScoringService


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


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing anything over `limit` bytes before or while it arrives."""
    declared = request.headers.get("content-length")
    if declared is not None:
        # isdigit alone admits '²' and the like; uvicorn filters these, other servers may not.
        if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
            raise BadRequest("Content-Length is not a valid length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # chunked bodies declare no length
                raise PayloadTooLarge(f"the body is over the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to answer; the error only ends the request without a traceback.
        raise BadRequest("the client closed the connection before sending the body") from None
    return b"".join(chunks)


def require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("send the body as Content-Type: application/json")


class Endpoints:
    def __init__(
        self, state: ServerState, guard: ApiKeyGuard, max_body_bytes: int, max_batch_body_bytes: int
    ) -> None:
        self.state = state
        self.guard = guard
        self.max_body_bytes = max_body_bytes
        self.max_batch_body_bytes = max_batch_body_bytes

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

    async def score(self, request: Request) -> Response:
        # Authenticate before reading anything, so strangers learn nothing from validation.
        self.guard.check(request.headers.get(HEADER))
        service = self.state.ready_service()
        require_json(request)
        payload = parse_json(await read_body(request, self.max_body_bytes))
        return JSONResponse(await service.score(payload))

    async def score_batch(self, request: Request) -> Response:
        self.guard.check(request.headers.get(HEADER))
        service = self.state.ready_service()
        require_json(request)
        payload = parse_json(await read_body(request, self.max_batch_body_bytes))
        return JSONResponse(await service.score_batch(payload))
