"""create_app(settings, scorer=None): the whole server, composed explicitly.

Run with `uvicorn --factory server.app:create_app`; settings then come from
FRAUD_* environment variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from server.accounts import AccountStore, MemoryStore
from server.admission import KEY as ADMISSION
from server.admission import Admission
from server.alerts import AlertSender
from server.allowlist import AllowlistGate, allowlist_of
from server.auth import key_guards
from server.batching import InlineRunner, LoopBatcher, Runner
from server.collectors import (
    alert_counters,
    comparison_tallies,
    drift_of,
    drift_windows,
    event_counters,
    policy_gauges,
    repository_counters,
    serving_gauges,
)
from server.endpoints import Endpoints, JSONResponse, ServerState
from server.errors import NotFound, ServingError, SettingsError
from server.events import EventScoring, takes_events
from server.hotpath import ScoringRoutes
from server.http_errors import http_error, serving_error, unexpected_error
from server.logs import use_json_logs
from server.metrics import Metrics
from server.metrics_export import MetricsExporter
from server.middleware import RequestContext
from server.openapi import openapi_document
from server.policy_routes import PolicyRoutes
from server.ratelimit import RateLimiter
from server.repository import ModelRepository, Snapshot, resolve_models
from server.scorer import OnnxScorer, Scorer
from server.service import ScoringService
from server.settings import Settings
from server.shutdown import GracefulShutdown
from server.thread_batcher import Batcher
from server.traffic import TrafficManager
from server.v2 import V2Endpoints

if TYPE_CHECKING:
    from server.grpcapi.server import GrpcServer

UI_DIR = Path(__file__).parent / "ui"
ALERT_FLUSH_S = 5.0  # at shutdown, how long queued alerts may take to go out

# A child of uvicorn's logger, so start-up lines reach uvicorn's handlers and format.
logger = logging.getLogger("uvicorn.error").getChild("fraud")


class ServingApp(Starlette):
    """Starlette with layers outside everything, its error handling included: the scoring
    routes first (the hot path meets nothing else), then the request layer, so that even
    an unexpected 500 carries a request id and is counted."""

    def __init__(self, outermost: Callable[[ASGIApp], ASGIApp], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outermost = outermost

    def build_middleware_stack(self) -> ASGIApp:
        return self.outermost(super().build_middleware_stack())


def make_runner(scorer: Scorer, settings: Settings, metrics: Metrics | None = None) -> Runner:
    if settings.inference_mode == "inline":
        return InlineRunner(scorer.predict, metrics)
    runner = Batcher if settings.inference_mode == "thread" else LoopBatcher
    return runner(
        scorer.predict,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        max_delay_s=settings.max_queue_delay_us / 1e6,
        metrics=metrics,
    )


def make_service(
    scorer: Scorer,
    settings: Settings,
    metrics: Metrics | None = None,
    alerts: AlertSender | None = None,
) -> ScoringService:
    return ScoringService(
        scorer,
        make_runner(scorer, settings, metrics),
        settings.review_threshold,
        settings.decline_threshold,
        settings.max_batch_items,
        metrics,
        settings.ood_z,
        alerts,
        settings.drift_window,
        settings.max_batch,
        settings.reasons,
    )


def open_repositories(
    settings: Settings,
    state: ServerState,
    metrics: Metrics | None,
    alerts: AlertSender | None,
    managers: dict[str, TrafficManager],
) -> dict[str, ModelRepository]:
    """One repository per served model, each with its own versions, polling and reload, and
    its traffic manager between it and the state (the policy in policy.json, if any)."""
    root = settings.model_repository
    names, state.default_model = resolve_models(
        root, settings.listed_models, settings.default_model
    )
    load = functools.partial(OnnxScorer.load, intra_op_threads=settings.intra_op_threads)
    service = functools.partial(make_service, settings=settings, metrics=metrics, alerts=alerts)
    for name in names:
        managers[name] = TrafficManager(root / name, name, state.publish, alerts)
    return {
        name: ModelRepository(
            root,
            name,
            load,
            service,
            managers[name].on_snapshot,
            settings.max_versions,
            keep=managers[name].named_versions,
        )
        for name in names
    }


def make_store(settings: Settings) -> AccountStore:
    """Redis when FRAUD_STATE_URL is set, else this worker's memory."""
    if settings.state_url is None:
        return MemoryStore(settings.state_snapshot, settings.state_snapshot_interval_s)
    from server.redisstore import RedisStore  # only a server that uses Redis imports it

    return RedisStore(settings.state_url, ttl_s=round(settings.state_ttl_days * 86_400))


def create_app(
    settings: Settings | None = None,
    scorer: Scorer | None = None,
    scorers: Sequence[Scorer] = (),
) -> ServingApp:
    """The server for `settings`. A given `scorer` (or several `scorers`, one per model
    name) is served alone, with no repository; the default model is then
    FRAUD_DEFAULT_MODEL or the first one."""
    given = [scorer] if scorer is not None else list(scorers)
    settings = settings if settings is not None else Settings.from_env()
    guard, admin_guard, key_reloader = key_guards(settings)
    allowlist = allowlist_of(settings.allowed_clients, settings.trusted_proxies)
    state = ServerState()
    alert_config = settings.alert_config()
    alerts = AlertSender(alert_config) if alert_config is not None else None
    metrics = Metrics() if settings.metrics else None
    exporter = MetricsExporter(metrics, settings.metrics_dir) if metrics is not None else None
    if metrics is not None:
        metrics.gauge_sources.append(serving_gauges(state))
        metrics.counter_sources.append(repository_counters(state))
        metrics.drift_sources.append(drift_windows(state))
        if alerts is not None:
            metrics.counter_sources.append(alert_counters(alerts))
        if key_reloader is not None:
            metrics.counter_sources.append(key_reloader.counters)
            metrics.gauge_sources.append(key_reloader.gauges)
        if allowlist is not None:
            metrics.counter_sources.append(allowlist.counters)
    endpoints = Endpoints(state, guard, metrics)
    managers: dict[str, TrafficManager] = {}  # filled when the repositories open
    if metrics is not None:
        metrics.gauge_sources.append(policy_gauges(managers))
        metrics.comparison_sources.append(comparison_tallies(managers))
    limiter = None
    if settings.rate_limit_rps > 0:
        burst = settings.rate_limit_burst or max(1, math.ceil(settings.rate_limit_rps))
        limiter = RateLimiter(settings.rate_limit_rps, burst)
    v2 = V2Endpoints(
        state,
        guard,
        admin_guard,
        settings.max_batch_body_bytes,
        settings.max_batch_items,
        metrics,
        limiter,
    )
    grpc_server: GrpcServer | None = None
    if settings.grpc_port:
        from server.grpcapi.server import grpc_server_of  # imported only when gRPC is on

        grpc_server = grpc_server_of(settings, state, v2, guard, metrics, limiter, allowlist)
    events = EventScoring(make_store(settings), settings.max_batch_items)
    events.able = lambda: [
        name for name, snapshot in state.snapshots.items() if takes_events(snapshot.latest)
    ]
    if metrics is not None:
        metrics.counter_sources.append(event_counters(events))
    shutdown = GracefulShutdown(settings.shutdown_drain_s, settings.shutdown_timeout_s)
    limits = Admission(
        settings.max_requests_in_hand, settings.max_connections, settings.accept_batch
    )
    if metrics is not None:
        metrics.counter_sources.append(limits.counters)
    if settings.log_format == "json":
        use_json_logs()

    async def load_models() -> None:
        """Every model's versions loaded and published, or SettingsError naming the first
        model with nothing servable: a server that is never ready should not start."""
        if given:
            names = [one.info.name for one in given]
            state.default_model = settings.default_model or names[0]
            if state.default_model not in names:
                raise SettingsError(
                    f"FRAUD_DEFAULT_MODEL {state.default_model!r} is not among the served"
                    f" models ({', '.join(names)})"
                )
            for one in given:
                service = make_service(one, settings, metrics, alerts)
                service.runner.start()
                state.publish(Snapshot(one.info.name, {one.info.version: service}))
            return
        state.repositories = open_repositories(settings, state, metrics, alerts, managers)
        for repository in state.repositories.values():
            result = await repository.refresh()
            if repository.name not in state.snapshots:
                reasons = "".join(f"; version {v}: {r}" for v, r in result.refused.items())
                raise SettingsError(
                    f"no servable version of model {repository.name!r}"
                    f" in {repository.model_root}{reasons}"
                )

    def close_runners() -> None:
        snapshots, state.snapshots = state.snapshots, {}
        for snapshot in snapshots.values():
            for service in snapshot.services.values():
                service.runner.close()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        if settings.insecure_disable_auth:
            logger.warning("FRAUD_INSECURE_DISABLE_AUTH is set: scoring needs no API key")
        tasks: list[asyncio.Task[None]] = []
        if alerts is not None:
            alerts.start()
        try:
            await events.store.start()
            await load_models()
        except BaseException:
            # Models loaded before the one that failed: stop their runners before leaving.
            close_runners()
            await events.store.close()
            if alerts is not None:
                alerts.close(0.0)
            raise
        for manager in managers.values():
            tasks.append(asyncio.create_task(manager.run()))
        if settings.poll_interval_s > 0:
            for repository in state.repositories.values():
                tasks.append(asyncio.create_task(repository.watch(settings.poll_interval_s)))
        if key_reloader is not None:
            tasks.append(asyncio.create_task(key_reloader.watch(settings.key_poll_s)))
        if metrics is not None:
            tasks.append(asyncio.create_task(metrics.keep_flushing()))
            metrics.drift_of = drift_of(state)
        if exporter is not None and exporter.file is not None:
            tasks.append(asyncio.create_task(exporter.keep_dumping()))
        if grpc_server is not None:
            try:
                await grpc_server.start()
            except BaseException:
                close_runners()
                raise
        if shutdown.install():
            shutdown.on_drain = state.start_draining
            if grpc_server is not None:
                shutdown.on_drain = grpc_server.drain_with(state.start_draining)
        # Everything alive now lives as long as the process. Freezing it keeps the
        # collector's full passes from walking ~10^5 start-up objects, which
        # showed as ~25 ms stalls at p99 under load.
        gc.collect()
        gc.freeze()
        # The lifespan state reaches uvicorn's protocol objects: the caps they apply.
        yield {ADMISSION: limits}
        if grpc_server is not None:
            await grpc_server.stop()  # in-flight calls finish before the runners close
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        limits.close()
        for repository in state.repositories.values():
            await repository.close()
        # In-flight requests are done (uvicorn waits for them before the lifespan ends), so
        # the snapshot holds every event that was answered.
        try:
            await events.store.close()
        except Exception:  # e.g. a full disk: say so, and still stop everything else
            logger.exception("closing the account state store failed")
        close_runners()
        if alerts is not None:
            # Off the loop: close() waits up to its timeout for queued alerts to go out.
            await anyio.to_thread.run_sync(alerts.close, ALERT_FLUSH_S)
        if exporter is not None:
            exporter.close()
        shutdown.finished()

    async def openapi(request: Request) -> Response:
        """The API description; its schemas name the model's features, so it needs the model."""
        service = state.ready_service()
        info = service.info
        return JSONResponse(
            openapi_document(
                info.feature_names,
                service.max_batch_items,
                info.input_name,
                info.output_name,
                several_models=len(state.snapshots) > 1,
                model_names=tuple(state.snapshots),
                missing_allowed=info.fills_missing,
                any_missing_allowed=any(
                    s.latest.info.fills_missing for s in state.snapshots.values()
                ),
            )
        )

    async def metrics_route(request: Request) -> Response:
        if exporter is None:
            raise NotFound("metrics are off (FRAUD_METRICS=false)")
        return Response(exporter.render(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/v1/health/live", endpoints.live, methods=["GET"]),
        Route("/v1/health/ready", endpoints.ready, methods=["GET"]),
        Route("/v1/model", endpoints.model, methods=["GET"]),
        Route("/v1/models", endpoints.models, methods=["GET"]),
        Route("/v1/models/{name}", endpoints.model, methods=["GET"]),
        Route("/v1/model/samples", endpoints.samples, methods=["GET"]),
        Route("/v1/models/{name}/samples", endpoints.samples, methods=["GET"]),
        Route("/v1/stats", endpoints.stats, methods=["GET"]),
        # The browser page: static files, off the scoring path.
        Mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui"),
        Route("/openapi.json", openapi, methods=["GET"]),
        *v2.routes(),
        *PolicyRoutes(state, guard, admin_guard, managers).routes(),
    ]

    def outermost(app: ASGIApp) -> ASGIApp:
        context = RequestContext(
            app, metrics, settings.access_log, state.is_draining, state.served_model
        )
        scoring = ScoringRoutes(
            context,
            state,
            guard,
            settings.max_body_bytes,
            settings.max_batch_body_bytes,
            limiter,
            events,
            v2,
            settings.request_deadline_ms,
        )
        if allowlist is None:
            return scoring
        # Outside the scoring routes too: a refused client's request is never read.
        return AllowlistGate(scoring, allowlist, context.request_id, settings.access_log)

    app = ServingApp(
        outermost,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ServingError: serving_error,
            HTTPException: http_error,
            Exception: unexpected_error,
        },
    )
    app.state.serving = state  # for tests and embedding code: the snapshot, the draining flag
    return app
