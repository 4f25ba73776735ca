"""The gRPC server: grpc.aio on uvicorn's event loop, started and stopped in the lifespan.

Each call goes through one wrapper that does for gRPC what the HTTP request layer does: the
client allowlist, a request id (metadata `x-request-id`, sent back in the trailers), the
deadline (the server's, or the client's gRPC deadline or `x-request-deadline-ms` if
sooner), the status code, the metrics and the access log. The standard health service says
SERVING until the server drains, and reflection describes every service (grpcurl works
without the .proto).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any
from urllib.parse import unquote

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from server import deadlines, logs
from server.allowlist import ClientAllowlist
from server.auth import ApiKeyGuard
from server.endpoints import ServerState
from server.errors import ClientNotAllowed, ServingError, SettingsError
from server.grpcapi.messages import POOL, SERVICE, SERVICE_DESCRIPTOR, message
from server.grpcapi.service import InferenceServicer, Metadata, code_name
from server.metrics import Metrics
from server.middleware import log_access, request_id_factory, valid_request_id
from server.ratelimit import RateLimiter
from server.settings import Settings
from server.v2 import V2Endpoints

logger = logging.getLogger("uvicorn.error").getChild("fraud")

REQUEST_ID = "x-request-id"
DEADLINE = deadlines.HEADER.decode()
# In-flight calls get this long to finish when the server stops.
STOP_GRACE_S = 5.0
Method = Callable[[Any, Metadata], Awaitable[Any]]


def peer_address(peer: str) -> str:
    """The address in grpc's peer string: "ipv4:10.0.0.1:5000", or "ipv6:%5B::1%5D:5000" (a
    URI: the brackets come percent-encoded)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return unquote(rest).rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return ""  # a Unix socket has no address: the allowlist refuses it


class AllowlistInterceptor(grpc.aio.ServerInterceptor):
    """The allowlist for the services the call wrapper does not see (health, reflection):
    over HTTP a refused client gets 403 on every route, health included; here too."""

    def __init__(self, allowlist: ClientAllowlist) -> None:
        self.allowlist = allowlist

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(f"/{SERVICE}/"):
            return handler  # unknown (UNIMPLEMENTED), or the wrapper's to refuse
        kind = "_".join(
            "stream" if streaming else "unary"
            for streaming in (handler.request_streaming, handler.response_streaming)
        )
        behaviour = getattr(handler, kind)
        refuse = self.refuse
        if inspect.isasyncgenfunction(behaviour):

            async def guarded_stream(request: Any, context: Any) -> Any:
                await refuse(context)
                async for answer in behaviour(request, context):
                    yield answer

            guarded: Callable[[Any, Any], Any] = guarded_stream
        else:

            async def guarded_call(request: Any, context: Any) -> Any:
                await refuse(context)
                return await behaviour(request, context)

            guarded = guarded_call
        return getattr(grpc, f"{kind}_rpc_method_handler")(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def refuse(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self.allowlist.allows_address(peer_address(context.peer())):
            self.allowlist.refused += 1
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, ClientNotAllowed().message)


class GrpcServer:
    def __init__(
        self,
        servicer: InferenceServicer,
        host: str,
        port: int,
        max_message_bytes: int,
        deadline_ms: float,
        reuse_port: bool = False,
        metrics: Metrics | None = None,
        access_log: bool = False,
        allowlist: ClientAllowlist | None = None,
    ) -> None:
        self.servicer = servicer
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.options = [
            # Off by default: a second server on the same port must fail to start, not
            # silently take half the connections. On for several workers (one port).
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self.deadline_s = deadline_ms / 1000 if deadline_ms > 0 else math.inf
        self.metrics = metrics
        self.access_log = access_log
        self.allowlist = allowlist
        self.new_id = request_id_factory()
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0  # once started: the port bound (the one asked for, or the kernel's)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        handlers = {}
        for method in SERVICE_DESCRIPTOR.methods:
            response = message(method.output_type.full_name.removeprefix("inference."))
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                self.wrap(method.name, getattr(self.servicer, method.name)),
                request_deserializer=message(
                    method.input_type.full_name.removeprefix("inference.")
                ).FromString,
                response_serializer=response.SerializeToString,
            )
        return handlers

    def wrap(self, name: str, method: Method) -> Callable[[Any, Any], Awaitable[Any]]:
        route = f"/{SERVICE}/{name}"
        label = self.servicer.model_label

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = perf_counter()
            metadata: Metadata = {}
            for key, value in context.invocation_metadata() or ():
                if isinstance(value, str):  # -bin keys carry bytes; none of ours does
                    metadata.setdefault(key, value)
            given = metadata.get(REQUEST_ID, "").encode("latin-1")
            request_id = given if valid_request_id(given) else self.new_id()
            id_token = logs.request_id.set(request_id.decode("ascii"))
            context.set_trailing_metadata(((REQUEST_ID, request_id.decode("ascii")),))
            code = "INTERNAL"  # unless an answer is made
            due_token = None
            try:
                try:
                    if self.allowlist is not None and not self.allowlist.allows_address(
                        peer_address(context.peer())
                    ):
                        self.allowlist.refused += 1
                        raise ClientNotAllowed()
                    due_token = deadlines.due.set(self.due(started, context, metadata))
                    answer = await method(request, metadata)
                except ServingError as error:
                    code = code_name(error)
                    if code == "RESOURCE_EXHAUSTED" and self.metrics is not None:
                        self.metrics.rate_limited += error.status_code == 429
                    await context.abort(grpc.StatusCode[code], error.message)
                except grpc.aio.AbortError:
                    raise
                except asyncio.CancelledError:
                    # The caller's deadline passed, or it cancelled: no server error.
                    remaining = context.time_remaining()
                    gone = remaining is not None and remaining <= 0
                    code = "DEADLINE_EXCEEDED" if gone else "CANCELLED"
                    raise
                except Exception:
                    logger.exception("unexpected error on %s", route)
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                code = "OK"
                return answer
            finally:
                logs.request_id.reset(id_token)
                if due_token is not None:
                    deadlines.due.reset(due_token)
                seconds = perf_counter() - started
                if self.metrics is not None:
                    self.metrics.count_request(route, code, seconds, label(request))
                if self.access_log:
                    log_access("GRPC", route, code, seconds, request_id)

        return call

    def due(
        self, started: float, context: grpc.aio.ServicerContext[Any, Any], metadata: Metadata
    ) -> float:
        """When the call must have reached the model: the server's deadline, or the
        caller's (gRPC deadline or x-request-deadline-ms), whichever is sooner."""
        asked = metadata.get(DEADLINE)
        due = deadlines.deadline_of(
            started, self.deadline_s * 1000, asked.encode() if asked is not None else None
        )
        remaining = context.time_remaining()
        return min(due, started + remaining) if remaining is not None else due

    async def start(self) -> None:
        interceptors = [AllowlistInterceptor(self.allowlist)] if self.allowlist is not None else []
        server = grpc.aio.server(options=self.options, interceptors=interceptors)
        server.add_registered_method_handlers(SERVICE, self.handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server, pool=POOL)
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as error:
            raise SettingsError(
                f"cannot serve gRPC on {self.address} ({error}): is the port in use? "
                "Set FRAUD_GRPC_PORT to a free port, or 0 for no gRPC"
            ) from None
        await server.start()
        self.server = server
        for name in ("", *names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("gRPC (Open Inference Protocol) on %s", self.address)

    def drain_with(self, drain_http: Callable[[], None]) -> Callable[[], None]:
        """SIGTERM's drain (on the loop): HTTP readiness and every gRPC health status say no
        from then on; calls are still answered."""

        def drain() -> None:
            drain_http()
            task = asyncio.get_running_loop().create_task(self.health.enter_graceful_shutdown())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return drain

    async def stop(self) -> None:
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(STOP_GRACE_S)
            self.server = None


def grpc_server_of(
    settings: Settings,
    state: ServerState,
    v2: V2Endpoints,
    guard: ApiKeyGuard,
    metrics: Metrics | None,
    limiter: RateLimiter | None,
    allowlist: ClientAllowlist | None,
) -> GrpcServer:
    """The gRPC server of `settings`, over the same state, keys, limits and metrics as HTTP."""
    servicer = InferenceServicer(state, v2, guard, settings.max_batch_items, limiter)
    return GrpcServer(
        servicer,
        settings.grpc_host,
        settings.grpc_port,
        settings.max_batch_body_bytes,
        settings.request_deadline_ms,
        settings.grpc_reuse_port,
        metrics,
        settings.access_log,
        allowlist,
    )
