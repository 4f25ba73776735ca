"""The request layer: a request id on every answer, request counts and times, the
optional access log, and `Connection: close` while the server drains.

RequestContext wraps every route but the scoring routes, whose plain-ASGI handler
(server/hotpath.py ScoringRoutes) does the same itself with the helpers here: a
wrapping layer costs a closure and a message copy per request, about a sixth of the
hot path's time.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import logs
from server.metrics import Metrics

access_logger = logging.getLogger("uvicorn.error").getChild("fraud.access")

REQUEST_ID = b"x-request-id"
CLOSE = (b"connection", b"close")
MAX_REQUEST_ID = 128
PRINTABLE = bytes(range(33, 127))  # printable ASCII without the space
STATIC_ROUTES = frozenset(
    {
        "/v1/score",
        "/v1/score/batch",
        "/v1/health/live",
        "/v1/health/ready",
        "/v1/model",
        "/v1/models",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/repository/index",
        "/metrics",
        "/openapi.json",
    }
)


def route_path(scope: Scope) -> str:
    """The path below the app's mount point: uvicorn's --root-path prefixes scope["path"]."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def route_label(path: str) -> str:
    """The route template a path belongs to: a bounded set, so that clients cannot
    grow the metrics without limit by inventing paths."""
    if path in STATIC_ROUTES:
        return path
    parts = path.split("/")
    if path.startswith("/v2/models/") and 4 <= len(parts) <= 7 and parts[3]:
        template = "/v2/models/{name}"
        rest = parts[4:]
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            template += "/versions/{version}"
            rest = rest[2:]
        if not rest:
            return template
        if len(rest) == 1 and rest[0] in ("ready", "infer"):
            return f"{template}/{rest[0]}"
    if path.startswith("/v1/models/") and len(parts) in (4, 5) and parts[3]:
        if len(parts) == 4:
            return "/v1/models/{name}"
        if parts[4] == "samples":
            return "/v1/models/{name}/samples"
    if len(parts) == 6 and path.startswith("/v2/repository/models/") and parts[5] == "load":
        return "/v2/repository/models/{name}/load"
    return "other"


def model_in_path(route: str, path: str) -> str:
    """The {name} of a route template that has one ("" otherwise), from the path."""
    if "{name}" not in route:
        return ""
    parts = path.split("/")
    return parts[4] if route.startswith("/v2/repository/") else parts[3]


def request_id_factory() -> Callable[[], bytes]:
    """Ids unique across processes and restarts, cheaper than uuid4 per request."""
    prefix = f"{os.getpid():x}{time.time_ns() % 0xFFFFFFFF:08x}-".encode()
    counter = itertools.count(1)
    return lambda: prefix + str(next(counter)).encode()


def valid_request_id(value: bytes) -> bool:
    # Printable ASCII without spaces, short: it goes into logs and response headers as is.
    return 0 < len(value) <= MAX_REQUEST_ID and not value.translate(None, PRINTABLE)


def log_access(
    method: str, route: str, status: int | str, seconds: float, request_id: bytes
) -> None:
    extra: dict[str, object] = {
        "request_id": request_id.decode("ascii"),
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
    }
    # The API key's name, when the request got as far as a key check that passed.
    if (name := logs.key_name.get()) is not None:
        extra["key_name"] = name
    access_logger.info("%s %s %s", method, route, status, extra=extra)


class RequestContext:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics | None,
        access_log: bool,
        draining: Callable[[], bool],
        served_model: Callable[[str], str] = lambda name: "",
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.draining = draining
        # A model name from the path -> itself if served, else "": the metrics' model label.
        self.served_model = served_model
        self.new_id = request_id_factory()

    def request_id(self, given: bytes | None) -> bytes:
        return given if given is not None and valid_request_id(given) else self.new_id()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID:
                given = value
                break
        request_id = self.request_id(given)
        scope["request_id"] = request_id
        token = logs.request_id.set(request_id.decode("ascii"))
        status = 500  # what the client gets if the app fails before answering
        draining = self.draining()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((REQUEST_ID, request_id))
                if draining:
                    # Clients move to another instance instead of reusing this connection.
                    headers.append(CLOSE)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            logs.request_id.reset(token)
            if self.metrics is not None or self.access_log:
                path = route_path(scope)
                route = route_label(path)
                if self.metrics is not None:
                    model = self.served_model(model_in_path(route, path))
                    self.metrics.count_request(route, status, seconds, model)
                if self.access_log:
                    log_access(scope["method"], route, status, seconds, request_id)
