"""HTTP only: read and check the request, call the service, write JSON with orjson.

The scoring routes are plain ASGI (server/hotpath.py), ahead of Starlette's router, and use
the helpers here; everything else is ordinary Starlette endpoints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Send

from server.auth import HEADER, ApiKeyGuard
from server.errors import (
    BadRequest,
    NotFound,
    NotReady,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from server.metrics import Metrics
from server.payloads import shown
from server.repository import ModelRepository, Snapshot
from server.service import ScoringService

logger = logging.getLogger("uvicorn.error").getChild("fraud")

SAMPLES_FILE = "samples.json"

JSON_HEADER = (b"content-type", b"application/json")
NAN = math.nan  # a stamp the request did not reach
Score = Callable[[ScoringService, Any, list[float] | None], Awaitable[Any]]
API_KEY = HEADER.encode()


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ServerState:
    """What the lifespan fills in; endpoints answer 503 until a snapshot is published.

    One snapshot per model. Publishing replaces the whole mapping in one assignment, so a
    reload of one model swaps only its entry and never disturbs a request on another.
    """

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}
        self.repositories: dict[str, ModelRepository] = {}
        self.default_model: str | None = None  # answers the routes that name no model
        self.draining = False  # SIGTERM received: readiness says no, scoring goes on

    @property
    def snapshot(self) -> Snapshot | None:
        """The default model's versions."""
        return self.snapshots.get(self.default_model) if self.default_model else None

    @property
    def repository(self) -> ModelRepository | None:
        return self.repositories.get(self.default_model) if self.default_model else None

    def start_draining(self) -> None:
        self.draining = True

    def is_draining(self) -> bool:
        return self.draining

    def ready_for_traffic(self) -> ScoringService:
        """For the readiness routes: 503 before every model is loaded and while draining."""
        if self.draining:
            raise NotReady("the server is shutting down", headers={"Retry-After": "1"})
        for name in self.repositories:
            self.ready_snapshot(name)
        return self.ready_service()

    def publish(self, snapshot: Snapshot) -> None:
        self.snapshots = {**self.snapshots, snapshot.name: snapshot}

    def ready_snapshot(self, model: str | None = None) -> Snapshot:
        """The versions of `model` (None: the default model): 404 for a model that is not
        served, 503 for one that is still loading."""
        snapshot = self.snapshots.get((self.default_model if model is None else model) or "")
        if snapshot is not None:
            return snapshot
        if model is not None and model not in self.repositories:
            served = ", ".join(self.snapshots)
            raise NotFound(f"unknown model {shown(model)} (serving: {served})")
        raise NotReady("the model is not loaded yet", headers={"Retry-After": "1"})

    def ready_service(self, version: str | None = None, model: str | None = None) -> ScoringService:
        """The newest version, or the one asked for (404 if it is not served)."""
        snapshot = self.ready_snapshot(model)
        return snapshot.latest if version is None else snapshot.get(version)

    def served_model(self, name: str) -> str:
        """`name` when that model is served, else "": a metrics label clients cannot grow."""
        return name if name in self.snapshots else ""


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


async def send_body(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """`headers` name the content type; the length is added here."""
    raw = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send,
    status: int,
    content: Any,
    headers: dict[str, str] | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    # Not through send_body: on the hot path one coroutine less is a measurable share.
    body = orjson.dumps(content)
    raw = [JSON_HEADER, (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if extra:
        raw += extra
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def requested_version(query: bytes) -> str | None:
    """`?version=N` pins a model version on /v1/score and /v1/score/batch."""
    if not query:
        return None
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the query string is malformed") from None
    if len(pairs) != 1 or pairs[0][0] != "version":
        raise BadRequest("the only query parameter is version, once", field="version")
    return pairs[0][1]


class Endpoints:
    def __init__(
        self, state: ServerState, guard: ApiKeyGuard, metrics: Metrics | None = None
    ) -> None:
        self.state = state
        self.guard = guard
        self.metrics = metrics

    async def live(self, request: Request) -> Response:
        return JSONResponse({"status": "live"})

    async def ready(self, request: Request) -> Response:
        service = self.state.ready_for_traffic()
        return JSONResponse(
            {"status": "ready", "model": service.info.name, "model_version": service.info.version}
        )

    async def model(self, request: Request) -> Response:
        """The default model's newest version, or `?version=N`; under /v1/models/{name},
        that model's."""
        self.guard.check(request.headers.get(HEADER))
        version = requested_version(request.scope["query_string"])
        model = request.path_params.get("name")
        return JSONResponse(self.state.ready_service(version, model).describe())

    async def models(self, request: Request) -> Response:
        """Every model served, the default first, each with its versions, newest first."""
        self.guard.check(request.headers.get(HEADER))
        default = self.state.ready_snapshot()
        snapshots = [default, *(s for s in self.state.snapshots.values() if s is not default)]
        return JSONResponse(
            {"default_model": default.name, "models": [self._listing(s) for s in snapshots]}
        )

    def _listing(self, snapshot: Snapshot) -> dict[str, Any]:
        repository = self.state.repositories.get(snapshot.name)
        return {
            "name": snapshot.name,
            "default_version": snapshot.latest.info.version,
            "versions": [service.describe() for service in snapshot.services.values()],
            "loads": {
                "ok": repository.loads_ok if repository else len(snapshot.services),
                "refused": repository.loads_refused if repository else 0,
            },
        }

    async def stats(self, request: Request) -> Response:
        """The last minute of scoring traffic, for the browser page's live panel."""
        self.guard.check(request.headers.get(HEADER))
        if self.metrics is None:
            raise NotFound("metrics are off (FRAUD_METRICS=false)")
        return JSONResponse({"recent": self.metrics.recent_traffic()})

    async def samples(self, request: Request) -> Response:
        """Real test-period rows shipped beside the newest version (samples.json) of the
        default model, or of the model named in the path."""
        self.guard.check(request.headers.get(HEADER))
        snapshot = self.state.ready_snapshot(request.path_params.get("name"))
        repository = self.state.repositories.get(snapshot.name)
        if repository is None:
            raise NotFound("this server has no model repository")
        folder = repository.model_root / snapshot.latest.info.version
        try:
            samples = orjson.loads((folder / SAMPLES_FILE).read_bytes())
        except (OSError, ValueError):
            raise NotFound(
                f"model {snapshot.name!r} version {snapshot.latest.info.version} ships no samples"
            ) from None
        return JSONResponse(samples)
