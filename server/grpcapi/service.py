"""The GRPCInferenceService's methods over the same state, keys, limits and service as the
HTTP routes (server/v2.py). Knows protobuf messages, not gRPC: each method takes the
request and its metadata and returns the response or raises a ServingError, which
server/grpcapi/server.py turns into a gRPC status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from server.auth import HEADER, ApiKeyGuard
from server.endpoints import ServerState
from server.errors import MissingApiKey, NotFound, ServingError
from server.grpcapi import messages
from server.grpcapi.tensors import infer_response, parse_infer
from server.payloads import shown
from server.ratelimit import RateLimiter
from server.v2 import EXTENSIONS, SERVER_NAME, SERVER_VERSION, V2Endpoints, index_of, log_admin

Metadata = dict[str, str]
T = TypeVar("T")


class InferenceServicer:
    def __init__(
        self,
        state: ServerState,
        v2: V2Endpoints,
        guard: ApiKeyGuard,
        max_rows: int,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.state = state
        self.v2 = v2
        self.guard = guard
        self.max_rows = max_rows
        self.limiter = limiter

    def model_label(self, request: Any) -> str:
        """The served model a request names ("" if none or unknown): the metrics' label."""
        name = getattr(request, "model_name", None) or getattr(request, "name", "")
        return self.state.served_model(name) if name else ""

    async def ServerLive(self, request: Any, metadata: Metadata) -> Any:
        return messages.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, metadata: Metadata) -> Any:
        try:
            self.state.ready_for_traffic()
        except ServingError:
            return messages.ServerReadyResponse(ready=False)
        return messages.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, metadata: Metadata) -> Any:
        """Ready, not ready (loading, or draining), or NOT_FOUND for a model or version that
        is not served, as on HTTP."""
        if not request.name:
            raise NotFound("name the model")
        try:
            self.state.ready_for_traffic()
        except ServingError:
            # Only a model this server serves can be ready; a stranger is still NOT_FOUND.
            if request.name not in self.state.snapshots and request.name not in (
                self.state.repositories
            ):
                raise
            return messages.ModelReadyResponse(ready=False)
        self.state.ready_snapshot(request.name).get(request.version or None)
        return messages.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, metadata: Metadata) -> Any:
        return messages.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, metadata: Metadata) -> Any:
        if not request.name:
            raise NotFound("name the model")
        return messages.ModelMetadataResponse(
            **self.v2.metadata(request.name, request.version or None)
        )

    async def ModelInfer(self, request: Any, metadata: Metadata) -> Any:
        """Authenticated, rate-limited and shed exactly as POST /v2/models/{name}/infer."""
        client = checked(self.guard.check, metadata)
        if self.limiter is not None:
            self.limiter.take(client)
        if not request.model_name:
            raise NotFound("name the model in model_name")
        service = self.state.ready_snapshot(request.model_name).get(request.model_version or None)
        service.refuse_early()
        info = service.info
        infer = parse_infer(
            request,
            info.input_name,
            len(info.feature_names),
            service.output_names,
            self.max_rows,
            info.fills_missing,
        )
        tensors = await service.infer(infer.rows, infer.outputs)
        return infer_response(info.name, info.version, infer, tensors)

    async def RepositoryIndex(self, request: Any, metadata: Metadata) -> Any:
        _, repositories = checked(self.v2.admin, metadata)
        entries = index_of(repositories)
        if request.ready:
            entries = [entry for entry in entries if entry["state"] == "READY"]
        return messages.RepositoryIndexResponse(models=entries)

    async def RepositoryModelLoad(self, request: Any, metadata: Metadata) -> Any:
        admin, repositories = checked(self.v2.admin, metadata)
        name = request.model_name
        model = name if name in repositories else shown(name)
        code, outcome = "INTERNAL", "failed unexpectedly"  # unless an answer is made
        try:
            _, outcome = await self.v2.load_model(repositories, name)
            code = "OK"
        except ServingError as error:
            code, outcome = code_name(error), error.message
            raise
        finally:
            log_admin(admin, "load", model, code, outcome)
        return messages.RepositoryModelLoadResponse()


def checked(check: Callable[[str | None], T], metadata: Metadata) -> T:
    """A key check on the `x-api-key` metadata; its refusal says where the key goes in gRPC."""
    try:
        return check(metadata.get(HEADER))
    except MissingApiKey:
        raise MissingApiKey(f"send an API key in the {HEADER} metadata") from None


# ServingError status -> gRPC status code name (grpc.StatusCode member), per the
# protocol's mapping of HTTP statuses.
CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


def code_name(error: ServingError) -> str:
    if error.code == "deadline_exceeded":
        return "DEADLINE_EXCEEDED"
    return CODES.get(error.status_code, "INTERNAL")
