"""The HTTP error answers: every error in v1's format, or the Open Inference Protocol's under
/v2, whether the service raised it or Starlette's router did."""

from __future__ import annotations

from typing import cast

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from server.endpoints import JSONResponse
from server.errors import MethodNotAllowed, NotFound, ServingError
from server.middleware import route_path
from server.v2 import v2_error


def error_response(request: Request, error: ServingError) -> Response:
    """v1's `{"error": {"code", "message"}}`, or the Open Inference Protocol's
    `{"error": "<message>"}` under /v2, so that v2 clients can read every error."""
    path = route_path(request.scope)
    if path == "/v2" or path.startswith("/v2/"):
        return v2_error(error)
    return JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers)


async def serving_error(request: Request, exc: Exception) -> Response:
    # Registered for ServingError: Starlette only hands it those.
    return error_response(request, cast(ServingError, exc))


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in our error format."""
    exc = cast(HTTPException, exc)  # registered for HTTPException
    error: ServingError
    if exc.status_code == 405:
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}",
            headers=dict(exc.headers or {}),
        )
    elif exc.status_code == 404:
        error = NotFound(f"no route {request.url.path}")
    else:
        error = ServingError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status_code, error.code = exc.status_code, "http_error"
    return error_response(request, error)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (Starlette re-raises it to the server), never to the client.
    return error_response(request, ServingError("internal error"))
