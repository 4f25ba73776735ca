"""HTTP only: read and check the request, call the service, write JSON with orjson.

The two scoring routes are plain ASGI (ScoringRoutes), ahead of Starlette's
router: on the hot path the router, the Request and Response objects and the
exception middleware cost about as much as parsing, validating and scoring a
transaction. Everything else is ordinary Starlette endpoints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server import logs
from server.auth import HEADER, ApiKeyGuard
from server.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServingError,
    UnsupportedMediaType,
)
from server.events import EventScoring
from server.metrics import BODY_READ, ENCODING, FINISHED, Metrics
from server.middleware import CLOSE, REQUEST_ID, RequestContext, log_access, route_path
from server.payloads import parse_json, shown
from server.ratelimit import RateLimiter
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


async def send_json(
    send: Send,
    status: int,
    content: Any,
    headers: dict[str, str] | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = orjson.dumps(content)
    raw = [JSON_HEADER, (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
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


NAMED_PREFIX = "/v1/models/"
# The named scoring routes, by the path's ending: (route label, is a batch).
NAMED_ENDINGS = (
    ("/events/score/batch", "/v1/models/{name}/events/score/batch"),
    ("/events/score", "/v1/models/{name}/events/score"),
    ("/score/batch", "/v1/models/{name}/score/batch"),
    ("/score", "/v1/models/{name}/score"),
)


def named_route(path: str) -> tuple[str, str] | None:
    """(route label, model name) for /v1/models/{name}/[events/]score[/batch], else None. Matched by
    hand, so that the named routes take the same path as /v1/score (no router)."""
    if not path.startswith(NAMED_PREFIX):
        return None
    rest = path[len(NAMED_PREFIX) :]
    for ending, label in NAMED_ENDINGS:
        if rest.endswith(ending):
            name = rest[: -len(ending)]
            if name and "/" not in name:
                return label, name
    return None


class ScoringRoutes:
    """POST /v1/score, /v1/score/batch and their named forms /v1/models/{name}/score[/batch],
    and the raw-event routes /v1/events/score[/batch] and /v1/models/{name}/events/score[/batch],
    ahead of everything else; other requests go on to `context`, the request layer around
    the Starlette app. The scoring routes do that layer's work themselves (request id,
    counts, access log, Connection: close)."""

    def __init__(
        self,
        context: RequestContext,
        state: ServerState,
        guard: ApiKeyGuard,
        max_body_bytes: int,
        max_batch_body_bytes: int,
        limiter: RateLimiter | None = None,
        events: EventScoring | None = None,
    ) -> None:
        self.context = context
        self.state = state
        self.guard = guard
        self.metrics = context.metrics
        self.limiter = limiter
        self.routes: dict[str, tuple[int, Score]] = {
            "/v1/score": (max_body_bytes, ScoringService.score),
            "/v1/score/batch": (max_batch_body_bytes, ScoringService.score_batch),
        }
        if events is not None:
            self.routes["/v1/events/score"] = (max_body_bytes, events.score)
            self.routes["/v1/events/score/batch"] = (max_batch_body_bytes, events.score_batch)
        for route, score in list(self.routes.items()):
            self.routes["/v1/models/{name}" + route.removeprefix("/v1")] = score

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        route = self.routes.get(path)
        model: str | None = None  # None: the default model
        if route is None:
            named = named_route(path) if scope["type"] == "http" else None
            route = self.routes.get(named[0]) if named is not None else None
            if named is None or route is None:
                await self.context(scope, receive, send)
                return
            path, model = named
        started = perf_counter()
        limit, score = route
        # ASGI servers give lower-case names. Reversed, so that a repeated header keeps
        # its first value, as Starlette's Headers.get does on the other routes.
        headers = dict(reversed(scope["headers"]))
        request_id = self.context.request_id(headers.get(REQUEST_ID))
        token = logs.request_id.set(request_id.decode("ascii"))
        extra = [(REQUEST_ID, request_id)]
        if self.state.draining:
            extra.append(CLOSE)
        status = 500  # unless an answer is sent
        # When the body was read, validated and encoded, as far as the request gets.
        stamps = [started, NAN, NAN, NAN, NAN] if self.metrics is not None else None
        try:
            try:
                result = await self.answer(scope, receive, headers, limit, score, stamps, model)
            except ServingError as error:
                status = error.status_code
                if status == 429 and self.metrics is not None:
                    self.metrics.rate_limited += 1
                await send_json(send, status, error.to_body(), error.headers, extra)
            except Exception:
                logger.exception("unexpected error on %s", path)
                body = ServingError("internal error").to_body()
                await send_json(send, 500, body, None, extra)
            else:
                if stamps is not None:
                    stamps[ENCODING] = perf_counter()
                status = 200
                await send_json(send, 200, result, None, extra)
        finally:
            # Counted even when the request is cancelled or the client is gone mid-answer.
            logs.request_id.reset(token)
            if stamps is not None or self.context.access_log:
                finished = perf_counter()
                if stamps is not None and self.metrics is not None:
                    # Counted and timed in bulk, once a second (Metrics._flush_scoring).
                    stamps[FINISHED] = finished
                    label = self.state.served_model(model or self.state.default_model or "")
                    log = self.metrics.scoring_log(path, label)
                    log.times.extend(stamps)
                    log.statuses.append(status)
                if self.context.access_log:
                    log_access(scope["method"], path, status, finished - started, request_id)

    async def answer(
        self,
        scope: Scope,
        receive: Receive,
        headers: dict[bytes, bytes],
        limit: int,
        score: Score,
        stamps: list[float] | None,
        model: str | None = None,
    ) -> Any:
        if scope["method"] != "POST":
            raise MethodNotAllowed(
                f"{scope['method']} is not allowed on {scope['path']}", headers={"Allow": "POST"}
            )
        presented = headers.get(API_KEY)
        key = presented.decode("latin-1") if presented is not None else None
        # Authenticate before reading anything, so strangers learn nothing from validation.
        self.guard.check(key)
        if self.limiter is not None:
            # Without auth the key is whatever a client sends: one shared bucket then.
            self.limiter.take(key or "" if self.guard.enabled else "")
        version = requested_version(scope["query_string"])
        self.state.ready_snapshot(model)  # 404 or 503 before reading a body meant for nobody
        require_json(headers.get(b"content-type"))
        body = await read_body(headers.get(b"content-length"), receive, limit)
        # The version is looked up only now, after the last await before the model
        # queue: a request never lands on a version that was swapped out meanwhile.
        service = self.state.ready_service(version, model)
        if stamps is not None:
            stamps[BODY_READ] = perf_counter()
        return await score(service, parse_json(body), stamps)


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
