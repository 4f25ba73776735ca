"""create_app(settings, scorer=None): the whole server, composed explicitly.

Run with `uvicorn --factory server.app:create_app`; settings then come from
FRAUD_* environment variables.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.auth import ApiKeyGuard
from server.batching import Batcher, InlineRunner, LoopBatcher, Runner
from server.endpoints import Endpoints, JSONResponse, ScoringRoutes, ServerState
from server.errors import MethodNotAllowed, NotFound, ServingError
from server.openapi import openapi_document
from server.scorer import OnnxScorer, Scorer
from server.service import ScoringService
from server.settings import Settings
from server.v2 import V2Endpoints

# A child of uvicorn's logger, so start-up lines reach uvicorn's handlers and format.
logger = logging.getLogger("uvicorn.error").getChild("fraud")


async def serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in our error format."""
    assert isinstance(exc, HTTPException)
    error: ServingError
    if exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    elif exc.status_code == 404:
        error = NotFound(f"no route {request.url.path}")
    else:
        error = ServingError(str(exc.detail))
        error.status_code, error.code = exc.status_code, "http_error"
    return JSONResponse(error.to_body(), status_code=exc.status_code, headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (Starlette re-raises it to the server), never to the client.
    return JSONResponse(ServingError("internal error").to_body(), status_code=500)


def make_runner(scorer: Scorer, settings: Settings) -> Runner:
    if settings.inference_mode == "inline":
        return InlineRunner(scorer.predict)
    runner = Batcher if settings.inference_mode == "thread" else LoopBatcher
    return runner(
        scorer.predict,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        max_delay_s=settings.max_queue_delay_us / 1e6,
    )


def create_app(settings: Settings | None = None, scorer: Scorer | None = None) -> Starlette:
    settings = settings if settings is not None else Settings.from_env()
    keys = settings.resolved_api_keys()
    guard = ApiKeyGuard(keys, enabled=not settings.insecure_disable_auth)
    state = ServerState()
    endpoints = Endpoints(state, guard)
    v2 = V2Endpoints(state, guard, settings.max_batch_body_bytes, settings.max_batch_items)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.insecure_disable_auth:
            logger.warning("FRAUD_INSECURE_DISABLE_AUTH is set: scoring needs no API key")
        loaded = scorer
        if loaded is None:
            # Load and warm up off the event loop; a broken model stops start-up here.
            loaded = await anyio.to_thread.run_sync(
                OnnxScorer.load, settings.model_dir, settings.intra_op_threads
            )
        runner = make_runner(loaded, settings)
        service = ScoringService(
            loaded,
            runner,
            settings.review_threshold,
            settings.decline_threshold,
            settings.max_batch_items,
        )
        runner.start()
        # Everything alive now lives as long as the process. Freezing it keeps the
        # collector's full passes from walking ~10^5 start-up objects, which
        # showed as ~25 ms stalls at p99 under load.
        gc.collect()
        gc.freeze()
        state.service = service
        info = loaded.info
        logger.info(
            "serving model %s version %s (%d features, sha256 %s)",
            info.name,
            info.version,
            len(info.feature_names),
            info.sha256[:12],
        )
        yield
        state.service = None
        runner.close()

    async def openapi(request: Request) -> Response:
        """The API description; its schemas name the model's features, so it needs the model."""
        service = state.ready_service()
        return JSONResponse(openapi_document(service.info.feature_names, service.max_batch_items))

    routes = [
        Route("/v1/health/live", endpoints.live, methods=["GET"]),
        Route("/v1/health/ready", endpoints.ready, methods=["GET"]),
        Route("/v1/model", endpoints.model, methods=["GET"]),
        Route("/v1/models", endpoints.models, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *v2.routes(),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(
                ScoringRoutes,
                state=state,
                guard=guard,
                max_body_bytes=settings.max_body_bytes,
                max_batch_body_bytes=settings.max_batch_body_bytes,
            )
        ],
        lifespan=lifespan,
        exception_handlers={
            ServingError: serving_error,
            HTTPException: http_error,
            Exception: unexpected_error,
        },
    )
