"""The scoring routes as plain ASGI, ahead of Starlette's router.

On the hot path the router, the Request and Response objects and the exception middleware
cost about as much as parsing, validating and scoring a transaction. So POST /v1/score,
/v1/score/batch, their named and raw-event forms, and the Open Inference Protocol's
/v2/models/{name}[/versions/{version}]/infer are answered here; every other request goes on
to the request layer around the Starlette app.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from starlette.types import Receive, Scope, Send

from server import deadlines, logs
from server.auth import ApiKeyGuard
from server.endpoints import (
    API_KEY,
    NAN,
    Score,
    ServerState,
    read_body,
    requested_version,
    require_json,
    send_body,
    send_json,
)
from server.errors import MethodNotAllowed, ServingError
from server.events import EventScoring
from server.metrics import BODY_READ, ENCODING, FINISHED
from server.middleware import CLOSE, REQUEST_ID, RequestContext, log_access, route_path
from server.payloads import parse_json
from server.ratelimit import RateLimiter
from server.service import ScoringService
from server.v2 import V2Endpoints, v2_error_body

logger = logging.getLogger("uvicorn.error").getChild("fraud")

NAMED_PREFIX = "/v1/models/"
# The named scoring routes, by the path's ending: (ending, route label).
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


V2_PREFIX, V2_INFER = "/v2/models/", "/infer"


def v2_infer_route(path: str) -> tuple[str, str, str | None] | None:
    """(route label, model name, version or None) for /v2/models/{name}[/versions/{version}]
    /infer, else None: the same paths Starlette's router would match."""
    if not (path.startswith(V2_PREFIX) and path.endswith(V2_INFER)):
        return None
    parts = path[len(V2_PREFIX) : -len(V2_INFER)].split("/")
    if len(parts) == 1 and parts[0]:
        return "/v2/models/{name}/infer", parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return "/v2/models/{name}/versions/{version}/infer", parts[0], parts[2]
    return None


class ScoringRoutes:
    """The scoring routes (see the module's docstring); other requests go on to `context`.
    The scoring routes do that layer's work themselves (request id, counts, access log,
    Connection: close)."""

    def __init__(
        self,
        context: RequestContext,
        state: ServerState,
        guard: ApiKeyGuard,
        max_body_bytes: int,
        max_batch_body_bytes: int,
        limiter: RateLimiter | None = None,
        events: EventScoring | None = None,
        v2: V2Endpoints | None = None,
        deadline_ms: float = 0.0,
    ) -> None:
        self.context = context
        self.deadline_ms = deadline_ms
        self.state = state
        self.guard = guard
        self.metrics = context.metrics
        self.limiter = limiter
        self.v2 = v2
        # Route -> body limit, the service's method, and the field a canary's share is sticky
        # by (None: a batch, which the champion answers whole).
        self.routes: dict[str, tuple[int, Score, str | None]] = {
            "/v1/score": (max_body_bytes, ScoringService.score, "transaction_id"),
            "/v1/score/batch": (max_batch_body_bytes, ScoringService.score_batch, None),
        }
        if events is not None:
            self.routes["/v1/events/score"] = (max_body_bytes, events.score, "account_id")
            self.routes["/v1/events/score/batch"] = (
                max_batch_body_bytes,
                events.score_batch,
                None,
            )
        for route, score in list(self.routes.items()):
            self.routes["/v1/models/{name}" + route.removeprefix("/v1")] = score

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.context(scope, receive, send)
            return
        path = route_path(scope)
        route = self.routes.get(path)
        model: str | None = None  # None: the default model
        infer: tuple[str, str, str | None] | None = None
        if route is None:
            named = named_route(path)
            route = self.routes.get(named[0]) if named is not None else None
            if named is not None and route is not None:
                path, model = named
            elif self.v2 is not None and (infer := v2_infer_route(path)) is not None:
                path, model = infer[0], infer[1]
            else:
                await self.context(scope, receive, send)
                return
        started = perf_counter()
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
        due_token = None
        try:
            try:
                # From when the head arrived (stamped by server/protocol.py), else from now.
                arrived = scope.get(deadlines.ARRIVED, started)
                due = deadlines.deadline_of(
                    arrived, self.deadline_ms, headers.get(deadlines.HEADER)
                )
                due_token = deadlines.due.set(due)
                if infer is not None and self.v2 is not None:
                    content, content_headers = await self.v2.answer_infer(
                        scope["method"], headers, receive, infer[1], infer[2], stamps
                    )
                elif route is not None:
                    result = await self.answer(scope, receive, headers, route, stamps, model)
            except ServingError as error:
                status = error.status_code
                if status == 429 and self.metrics is not None:
                    self.metrics.rate_limited += 1
                body: Any = error.to_body()
                if infer is not None:
                    status, body = v2_error_body(error)
                await send_json(send, status, body, error.headers, extra)
            except Exception:
                logger.exception("unexpected error on %s", path)
                internal = ServingError("internal error")
                body = v2_error_body(internal)[1] if infer is not None else internal.to_body()
                await send_json(send, 500, body, None, extra)
            else:
                status = 200
                if infer is not None:
                    await send_body(send, 200, content, content_headers + extra)
                else:
                    if stamps is not None:
                        stamps[ENCODING] = perf_counter()
                    await send_json(send, 200, result, None, extra)
        finally:
            # Counted even when the request is cancelled or the client is gone mid-answer.
            logs.request_id.reset(token)
            if due_token is not None:
                deadlines.due.reset(due_token)
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
        route: tuple[int, Score, str | None],
        stamps: list[float] | None,
        model: str | None = None,
    ) -> Any:
        limit, score, key_field = route
        if scope["method"] != "POST":
            raise MethodNotAllowed(
                f"{scope['method']} is not allowed on {scope['path']}", headers={"Allow": "POST"}
            )
        presented = headers.get(API_KEY)
        key = presented.decode("latin-1") if presented is not None else None
        # Authenticate before reading anything, so strangers learn nothing from validation.
        client = self.guard.check(key)
        if self.limiter is not None:
            # By the key's name (without auth, every request has the same one).
            self.limiter.take(client)
        version = requested_version(scope["query_string"])
        # 404 or 503 before reading a body meant for nobody, or one that would be shed.
        self.state.ready_service(version, model).refuse_early()
        require_json(headers.get(b"content-type"))
        body = await read_body(headers.get(b"content-length"), receive, limit)
        # The version is looked up only now, after the last await before the model
        # queue: a request never lands on a version that was swapped out meanwhile.
        snapshot = self.state.ready_snapshot(model)
        if stamps is not None:
            stamps[BODY_READ] = perf_counter()
        if version is not None:
            return await score(snapshot.get(version), parse_json(body), stamps)
        if snapshot.traffic is None:  # no policy: the newest version answers
            return await score(snapshot.latest, parse_json(body), stamps)
        return await snapshot.traffic.answer(snapshot, score, parse_json(body), stamps, key_field)
