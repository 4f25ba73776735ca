"""The Open Inference Protocol (KServe v2) over REST, on the same service and batcher as /v1.

Errors follow the protocol: `{"error": "<message>"}`; a request the service
would answer with 422 is a 400 here.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive

from server.auth import HEADER, ApiKeyGuard
from server.endpoints import API_KEY, JSON_HEADER, JSONResponse, ServerState, read_body
from server.errors import (
    BadRequest,
    InvalidApiKey,
    MethodNotAllowed,
    MissingApiKey,
    NotFound,
    ServingError,
)
from server.metrics import BODY_READ, ENCODING, VALIDATED, Metrics
from server.payloads import shown
from server.ratelimit import RateLimiter
from server.repository import ModelRepository
from server.service import CONTRIBUTIONS, ScoringService
from server.tensors import encode_response, parse_infer_request, split_body

SERVER_NAME = "fraud-scoring"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_data"]
PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = b"inference-header-content-length"
OCTET_STREAM = (b"content-type", b"application/octet-stream")

# One line per admin action, with the admin key's name.
admin_logger = logging.getLogger("uvicorn.error").getChild("fraud.admin")


def v2_error_body(error: ServingError) -> tuple[int, dict[str, str]]:
    """The protocol's status and body for an error: 422 is a 400 here."""
    return (400 if error.status_code == 422 else error.status_code), {"error": error.message}


def v2_error(error: ServingError) -> Response:
    status, body = v2_error_body(error)
    return JSONResponse(body, status_code=status, headers=error.headers)


class V2Endpoints:
    def __init__(
        self,
        state: ServerState,
        guard: ApiKeyGuard,
        admin_guard: ApiKeyGuard | None,
        max_body_bytes: int,
        max_rows: int,
        metrics: Metrics | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.state = state
        self.guard = guard
        self.admin_guard = admin_guard
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows
        self.metrics = metrics
        self.limiter = limiter

    def routes(self) -> list[Route]:
        model = "/v2/models/{name}"
        version = model + "/versions/{version}"
        return [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route(model, self.model_metadata, methods=["GET"]),
            Route(version, self.model_metadata, methods=["GET"]),
            Route(model + "/ready", self.model_ready, methods=["GET"]),
            Route(version + "/ready", self.model_ready, methods=["GET"]),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.load, methods=["POST"]),
        ]

    def model(self, request: Request) -> ScoringService:
        """The service for the model and version in the path, or a v2 error."""
        snapshot = self.state.ready_snapshot(request.path_params["name"])
        return snapshot.get(request.path_params.get("version"))

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}
        )

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        try:
            self.state.ready_for_traffic()
        except ServingError as error:
            return v2_error(error)
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        try:
            metadata = self.metadata(
                request.path_params["name"], request.path_params.get("version")
            )
        except ServingError as error:
            return v2_error(error)
        return JSONResponse(metadata)

    def metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """A model's metadata in the protocol's shape (both transports), or a ServingError."""
        service = self.state.ready_snapshot(name).get(version)
        info = service.info
        outputs = [{"name": info.output_name, "datatype": "FP32", "shape": [-1, 1]}]
        if service.explainer is not None:
            outputs.append(
                {"name": CONTRIBUTIONS, "datatype": "FP32", "shape": [-1, len(info.feature_names)]}
            )
        return {
            "name": info.name,
            "versions": list(self.state.ready_snapshot(info.name).services),
            "platform": PLATFORM,
            "inputs": [
                {
                    "name": info.input_name,
                    "datatype": "FP32",
                    "shape": [-1, len(info.feature_names)],
                }
            ],
            "outputs": outputs,
        }

    async def model_ready(self, request: Request) -> Response:
        try:
            self.state.ready_for_traffic()
            self.model(request)
        except ServingError as error:
            return v2_error(error)
        return JSONResponse({"name": request.path_params["name"], "ready": True})

    async def answer_infer(
        self,
        method: str,
        headers: dict[bytes, bytes],
        receive: Receive,
        name: str,
        version: str | None,
        stamps: list[float] | None,
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """POST /v2/models/{name}[/versions/{version}]/infer, on the plain-ASGI path of
        server/hotpath.py: the answer's body and its content headers, or a ServingError."""
        if method != "POST":
            raise MethodNotAllowed(f"{method} is not allowed on infer", headers={"Allow": "POST"})
        presented = headers.get(API_KEY)
        key = presented.decode("latin-1") if presented is not None else None
        client = self.guard.check(key)
        if self.limiter is not None:
            # By the key's name (without auth, every request has the same one).
            self.limiter.take(client)
        # 404 or 503 before reading a body meant for nobody, or one that would be shed.
        self.state.ready_snapshot(name).get(version).refuse_early()
        body = await read_body(headers.get(b"content-length"), receive, self.max_body_bytes)
        if stamps is not None:
            stamps[BODY_READ] = perf_counter()
        # Looked up again after the last await: see ScoringRoutes.answer.
        service = self.state.ready_snapshot(name).get(version)
        length = headers.get(HEADER_LENGTH)
        header, binary = split_body(body, length.decode("latin-1") if length is not None else None)
        info = service.info
        infer = parse_infer_request(
            header,
            binary,
            info.input_name,
            len(info.feature_names),
            service.output_names,
            self.max_rows,
            info.fills_missing,
        )
        if stamps is not None:
            stamps[VALIDATED] = perf_counter()
        tensors = await service.infer(infer.rows, tuple(infer.outputs))
        if stamps is not None:
            stamps[ENCODING] = perf_counter()
        content, header_length = encode_response(info.name, info.version, infer, tensors)
        if header_length is None:
            return content, [JSON_HEADER]
        return content, [OCTET_STREAM, (HEADER_LENGTH, str(header_length).encode())]

    async def repository_index(self, request: Request) -> Response:
        """Every version folder the server knows of: READY, or UNAVAILABLE with the reason."""
        try:
            _, repositories = self.admin(request.headers.get(HEADER))
        except ServingError as error:
            return v2_error(error)
        return JSONResponse(index_of(repositories))

    async def load(self, request: Request) -> Response:
        """Look at the model's folder now: load new or changed versions, retry refused ones."""
        try:
            admin, repositories = self.admin(request.headers.get(HEADER))
        except ServingError as error:
            return v2_error(error)
        name = request.path_params["name"]
        status, outcome = 500, "failed unexpectedly"  # unless an answer is made
        try:
            try:
                answer, outcome = await self.load_model(repositories, name)
            except ServingError as error:
                response, outcome = v2_error(error), error.message
            else:
                response = JSONResponse(answer)
            status = response.status_code
            return response
        finally:
            log_admin(admin, "load", name if name in repositories else shown(name), status, outcome)

    async def load_model(
        self, repositories: dict[str, ModelRepository], name: str
    ) -> tuple[dict[str, Any], str]:
        """The answer to a load and its outcome in a few words for the admin log, or a
        ServingError (its message is the outcome)."""
        repository = repositories.get(name)
        if repository is None:
            raise NotFound(f"unknown model {shown(name)} (serving: {', '.join(repositories)})")
        result = await repository.refresh(force=True)
        snapshot = self.state.ready_snapshot(name)
        # A failure only if the newest version on disk is not what serves by default now: an
        # old broken folder left beside a good newer version does not fail every load.
        newest = snapshot.latest.info.version
        blocking = {v: r for v, r in result.refused.items() if int(v) >= int(newest)}
        if blocking:
            reasons = "; ".join(f"version {v}: {r}" for v, r in blocking.items())
            serving = ", ".join(snapshot.services)
            raise BadRequest(f"refused {reasons}; serving versions {serving}")
        answer = {
            "name": snapshot.name,
            "versions": list(snapshot.services),
            "loaded": result.loaded,
            "refused": result.refused,
        }
        loaded = ", ".join(result.loaded) or "none"
        serving = ", ".join(snapshot.services)
        return answer, f"loaded versions {loaded}, refused {len(result.refused)}; serving {serving}"

    def admin(self, presented: str | None) -> tuple[str, dict[str, ModelRepository]]:
        """The admin key's name and every model's repository, for a caller holding one."""
        if self.admin_guard is None:
            if not presented:
                raise MissingApiKey()
            raise InvalidApiKey("the repository routes are off: no admin key is configured")
        admin = self.admin_guard.check(presented)
        if not self.state.repositories:
            raise NotFound("this server has no model repository")
        return admin, self.state.repositories


def index_of(repositories: dict[str, ModelRepository]) -> list[dict[str, str]]:
    return [entry for r in repositories.values() for entry in r.index()]


def log_admin(admin: str, action: str, model: str, status: int | str, outcome: str) -> None:
    """One line per admin action, with the admin key's name; `status` is the HTTP status or
    the gRPC code."""
    admin_logger.info(
        "admin key %s: %s of model %s: %s %s",
        admin,
        action,
        model,
        status,
        outcome,
        extra={
            "key_name": admin,
            "action": action,
            "model": model,
            "status": status,
            "outcome": outcome,
        },
    )
